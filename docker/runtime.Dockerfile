# syntax=docker/dockerfile:1.7
# The inference runtime: torch from PyPI (its Linux wheels are CUDA builds that bring their own CUDA libraries, so
# no NVIDIA base image is needed; the same image runs on CPU nodes) and Triton. Build from the repository root:
#   docker build -f docker/runtime.Dockerfile -t infleet/runtime:0.1.0 .
# or, on a machine without a registry, on the Debian base `make images-cuda` makes (cluster/images.py).
# TORCH_VARIANT=cpu (`make images`) is the same PyPI wheels minus what no CPU process loads. PyPI's torch cannot go
# without its CUDA wheels: libtorch_cuda.so and libtorch_python.so name libcudart, libcublasLt, libcudnn, libnccl...
# as DT_NEEDED, so `import torch` fails without them. What is only opened on a GPU goes: cuDNN's engine libraries
# (libcudnn.so.9 loads them on first use), cuSOLVER (torch's CUDA linear algebra library opens it lazily),
# NVSHMEM's device bitcode, profiler and static libraries, headers. The C compiler Triton needs on CUDA goes too.
ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VARIANT=cuda
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python3 -m venv /opt/infleet \
    && if [ "$TORCH_VARIANT" = cpu ]; then \
        /opt/infleet/bin/pip install "torch==2.15.0" "triton==3.9.0" \
        && nv="$(echo /opt/infleet/lib/python3*/site-packages/nvidia)" \
        && rm -rf "$nv"/cudnn/lib/libcudnn_?*.so.9 "$nv"/cu13/lib/libcusolver* "$nv"/cu13/lib/libnvperf_* \
            "$nv"/cu13/lib/libnvblas* "$nv"/cu13/lib/libcufftw* "$nv"/cu13/lib/libpcsamplingutil.so "$nv"/cu13/lib/*.a \
            "$nv"/nvshmem/lib/*.bc "$nv"/nvshmem/lib/*.a "$nv"/nvshmem/lib/nvshmem_transport_* \
            "$nv"/cu13/include "$nv"/cudnn/include "$nv"/nvshmem/include "$nv"/nccl/include; \
    else \
        /opt/infleet/bin/pip install "torch==2.15.0" "triton==3.9.0"; \
    fi
# infleet's CPU kernels (runtime/kernels/cpu_*.c: decode attention, int8 logits) are compiled here, once, into
# the venv: the CPU image carries no compiler, and the pod's root filesystem is read-only.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc=4:12.2.* libc6-dev=2.36-* \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml setup.py README.md ./
COPY infleet ./infleet
COPY runtime ./runtime
RUN /opt/infleet/bin/pip install \
        "tokenizers==0.23.3" "gguf==0.19.0" "safetensors==0.8.0" "numpy==2.4.6" "jinja2==3.1.6" \
        "fastapi==0.165.0" "uvicorn==0.55.0" "prometheus-client==0.26.0" "pydantic==2.14.3" "PyYAML==6.0.3" \
        "httpx==0.28.1" "huggingface_hub==2.4.0" "boto3==1.44.18" "gcsfs==2026.10.1" "filelock==4.3.2" \
        "xgrammar==0.2.9" \
    && /opt/infleet/bin/pip install --no-deps . \
    && INFLEET_KERNEL_DIR=/opt/infleet/kernels /opt/infleet/bin/python -P -m infleet.runtime.kernels.cpu_native

FROM ${PYTHON_IMAGE}
ARG TORCH_VARIANT=cuda
LABEL org.opencontainers.image.title="infleet runtime" \
      org.opencontainers.image.source="https://github.com/infleet/infleet" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive
# On CUDA, Triton compiles a small C launcher per kernel at run time: it needs a C compiler and Python's headers
RUN if [ "$TORCH_VARIANT" != cpu ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends gcc=4:12.2.* libc6-dev=2.36-* python3-dev=3.11.2-* \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --gid 10001 infleet \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin infleet
COPY --from=build /opt/infleet /opt/infleet
# Triton and torch.compile caches go to /tmp (an emptyDir in the pod: the root filesystem is read-only)
ENV PATH=/opt/infleet/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    TRITON_CACHE_DIR=/tmp/triton HF_HOME=/tmp/hf INFLEET_CACHE=/tmp/infleet INFLEET_KERNEL_DIR=/opt/infleet/kernels
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["python", "-m", "infleet.runtime"]
CMD ["serve", "--help"]
