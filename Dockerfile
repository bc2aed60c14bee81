# The dupq service: CPU-only, non-root, the bundled model and demo corpus inside, data in /data.
#
#   docker build --build-arg BASE=python:3.11-slim -t dupq .
#
# BASE must provide python3 (3.11) with venv. `make docker` builds one from Debian bookworm with
# debootstrap where no image can be pulled. The build context must hold wheelhouse/ with the CPU
# build of torch (PyPI's default torch is the multi-GB CUDA build) and, where pip goes through a
# TLS-intercepting proxy, that proxy's CA bundle as wheelhouse/ca-certificates.crt: both stay in
# the build stage, never in the final image.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_DEFAULT_TIMEOUT=180
COPY wheelhouse/ /wheelhouse/
RUN if [ -f /wheelhouse/ca-certificates.crt ]; then echo "PIP_CERT=/wheelhouse/ca-certificates.crt" > /tmp/pipenv; fi; \
    python3 -m venv /opt/venv
COPY pyproject.toml README.md /src/
COPY app/ /src/app/
COPY model/ /src/model/
RUN set -a; [ -f /tmp/pipenv ] && . /tmp/pipenv; set +a; \
    /opt/venv/bin/pip install --find-links /wheelhouse 'torch==2.13.0' && \
    /opt/venv/bin/pip install --find-links /wheelhouse /src && \
    /opt/venv/bin/python -c "import torch, faiss, onnxruntime, fastapi; print('torch', torch.__version__)" && \
    find /opt/venv -name '__pycache__' -prune -exec rm -rf {} + && \
    rm -rf /opt/venv/lib/python3*/site-packages/torch/include /opt/venv/lib/python3*/site-packages/torch/share/cmake \
           /opt/venv/lib/python3*/site-packages/pip

FROM ${BASE}
ARG UID=10001
RUN useradd --uid ${UID} --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin dupq \
    && mkdir -p /data && chown dupq /data
COPY --from=build /opt/venv /opt/venv
COPY models/ /opt/dupq/models/
COPY demo/ /opt/dupq/demo/
COPY docker/entrypoint.sh /usr/local/bin/dupq-entrypoint
RUN chmod -R a+rX /opt/dupq /usr/local/bin/dupq-entrypoint
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DUPQ_MODEL_DIR=/opt/dupq/models/dupq-qqp \
    DUPQ_DATA_DIR=/data \
    DUPQ_SEED_FILE=/opt/dupq/demo/questions.tsv
USER dupq
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=2).status != 200)"]
ENTRYPOINT ["/usr/local/bin/dupq-entrypoint"]
CMD ["dupq", "serve", "--host", "0.0.0.0", "--port", "8000"]
