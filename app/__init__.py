"""dupq's web service and command line: FastAPI routes over the model in ``model/``."""
