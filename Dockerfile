# syntax=docker/dockerfile:1
# The overseer-operator image: build wheels in one stage, install only wheels in the next.
#   docker build -t overseer-operator:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY overseer_operator ./overseer_operator
# The project's wheel first, then every dependency as a wheel beside it (all of them publish
# manylinux or pure-Python wheels, so no compiler is needed here either).
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip wheel --wheel-dir /wheels /wheels/overseer_operator-*.whl

FROM ${PYTHON_IMAGE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HOME=/tmp
# Wheels come in through a bind mount so they never land in a layer; pip, setuptools and wheel
# leave with them, as nothing installs packages at run time.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels overseer-operator \
 && pip uninstall --yes pip setuptools wheel
# A numeric non-root user, so the kubelet can verify runAsNonRoot without /etc/passwd.
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["overseer-operator"]
CMD ["run", "--all-namespaces"]
