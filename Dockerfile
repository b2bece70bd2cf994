# syntax=docker/dockerfile:1
# The overseer-operator image: build wheels in one stage, install only wheels in the next.
#   docker build -t overseer-operator:0.1.0 .
# Without a Docker engine, scripts/build-image builds this file unchanged with buildah.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY overseer_operator ./overseer_operator
# The project's wheel first, then every dependency as a wheel beside it. All publish manylinux
# or pure-Python wheels except erlang-py, a pure-Python sdist that pip turns into a wheel here;
# --use-pep517 builds it in an isolated environment, as older pips (Debian's 23.0) would otherwise
# run `setup.py bdist_wheel` and fail without the `wheel` package. No compiler is needed.
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip wheel --use-pep517 --wheel-dir /wheels /wheels/overseer_operator-*.whl

FROM ${PYTHON_IMAGE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HOME=/tmp
# Wheels come in through a bind mount so they never land in a layer; pip, setuptools and wheel
# leave with them, as nothing installs packages at run time.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels overseer-operator \
 && pip uninstall --yes pip setuptools wheel
# A numeric non-root user, so the kubelet can verify runAsNonRoot without /etc/passwd. It has no
# passwd entry, and needs none (the operator names itself after POD_NAME, not the user).
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["overseer-operator"]
CMD ["run", "--all-namespaces"]
