# The dupq service: CPU-only, non-root, no PyTorch (the network runs in ONNX Runtime), the bundled
# model inside, data in /data. The store starts empty; set DUPQ_SEED_FILE (the demo corpus is at
# /opt/dupq/demo/questions.tsv) to load questions into an empty store at start-up.
#
#   docker build --build-arg BASE=python:3.11-slim -t dupq .
#
# BASE must provide python3 (3.11) with venv. `make docker` builds one from Debian bookworm with
# debootstrap where no image can be pulled. Where pip goes through a TLS-intercepting proxy, put
# that proxy's CA bundle in the build context as build/docker-ca/ca-certificates.crt: it stays in
# the build stage, never in the final image.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_DEFAULT_TIMEOUT=180
# pyproject.toml is there so that the COPY has a source when build/docker-ca/ is absent.
COPY pyproject.toml build/docker-ca* /docker-ca/
RUN if [ -f /docker-ca/ca-certificates.crt ]; then echo "PIP_CERT=/docker-ca/ca-certificates.crt" > /tmp/pipenv; fi; \
    python3 -m venv /opt/venv
COPY pyproject.toml README.md /src/
COPY app/ /src/app/
COPY model/ /src/model/
RUN set -a; [ -f /tmp/pipenv ] && . /tmp/pipenv; set +a; \
    /opt/venv/bin/pip install /src && \
    /opt/venv/bin/python -c "import faiss, onnxruntime, fastapi, app.main" && \
    ! /opt/venv/bin/python -c "import torch" 2>/dev/null && \
    find /opt/venv -name '__pycache__' -prune -exec rm -rf {} + && \
    rm -rf /opt/venv/lib/python3*/site-packages/pip /opt/venv/lib/python3*/site-packages/setuptools
# What serving reads of the model directory (the weights are for training, not needed here), the
# demo corpus and the entrypoint, readable by the service user whatever the checkout's umask:
# made so here, so that the final image holds them once (a chmod there would add a second copy).
COPY models/dupq-qqp/config.json models/dupq-qqp/model.onnx models/dupq-qqp/tokenizer.json /opt/dupq/models/dupq-qqp/
COPY demo/ /opt/dupq/demo/
COPY docker/entrypoint.sh /opt/dupq/bin/dupq-entrypoint
RUN chmod -R a+rX /opt/dupq && chmod a+x /opt/dupq/bin/dupq-entrypoint

FROM ${BASE}
ARG UID=10001
RUN useradd --uid ${UID} --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin dupq \
    && mkdir -p /data && chown dupq /data
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/dupq /opt/dupq
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DUPQ_MODEL_DIR=/opt/dupq/models/dupq-qqp \
    DUPQ_DATA_DIR=/data
USER dupq
VOLUME ["/data"]
EXPOSE 8000
# Healthy once /ready says 200. Start-up may take minutes (re-embedding a store for a new model,
# copying a large one from PostgreSQL, seeding): failures count only after the first success or
# 10 minutes, so that docker-compose waits for it rather than call the replica unhealthy (with 60 s,
# `docker-compose up -d` onto a new model failed after 83 s while 50,000 questions were re-embedded).
HEALTHCHECK --interval=10s --timeout=3s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=2).status != 200)"]
ENTRYPOINT ["/opt/dupq/bin/dupq-entrypoint"]
CMD ["dupq", "serve", "--host", "0.0.0.0", "--port", "8000"]
