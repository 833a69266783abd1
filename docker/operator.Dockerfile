# syntax=docker/dockerfile:1.7
# The InferenceDeployment operator: kopf handlers, no torch. Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t infleet/operator:0.1.0 .
ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python3 -m venv /opt/infleet
COPY pyproject.toml setup.py README.md ./
COPY infleet ./infleet
COPY operator ./operator
COPY autoscaler ./autoscaler
COPY monitoring ./monitoring
# the torch-free corner of the runtime that the operator reads: the measured tier profiles
COPY runtime/__init__.py ./runtime/
COPY runtime/quant/__init__.py ./runtime/quant/
COPY runtime/quant/profiles ./runtime/quant/profiles
# only what the operator imports; the package itself without its heavy (runtime) dependencies
RUN /opt/infleet/bin/pip install \
        "kopf==1.45.2" "kubernetes==37.0.2" "pydantic==2.14.3" "prometheus-client==0.26.0" \
        "httpx==0.28.1" "PyYAML==6.0.3" "aiohttp==3.14.5" "prometheus-api-client==0.7.2" \
    && /opt/infleet/bin/pip install --no-deps .

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="infleet operator" \
      org.opencontainers.image.source="https://github.com/infleet/infleet" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 infleet && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin infleet
COPY --from=build /opt/infleet /opt/infleet
ENV PATH=/opt/infleet/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "infleet.operator"]
CMD ["run"]
