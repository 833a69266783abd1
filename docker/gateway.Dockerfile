# syntax=docker/dockerfile:1.7
# The gateway: OpenAI and KServe v2 entrypoint in front of every InferenceDeployment. Build from the repository root:
#   docker build -f docker/gateway.Dockerfile -t infleet/gateway:0.1.0 .
ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python3 -m venv /opt/infleet
COPY pyproject.toml setup.py README.md ./
COPY infleet ./infleet
COPY gateway ./gateway
RUN /opt/infleet/bin/pip install \
        "kubernetes==37.0.2" "pydantic==2.14.3" "prometheus-client==0.26.0" "httpx==0.28.1" \
        "PyYAML==6.0.3" "starlette==1.10.0" "uvicorn==0.55.0" "uvloop==0.23.0" "httptools==0.9.0" "aiohttp==3.14.5" \
        "tokenizers==0.23.3" "jinja2==3.1.6" "jsonschema==4.26.0" \
    && /opt/infleet/bin/pip install --no-deps .

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="infleet gateway" \
      org.opencontainers.image.source="https://github.com/infleet/infleet" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 infleet && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin infleet
COPY --from=build /opt/infleet /opt/infleet
ENV PATH=/opt/infleet/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["python", "-m", "infleet.gateway"]
CMD ["run", "--port", "8080"]
