# pgring container image: Debian 12 (bookworm), built from source, run as a non-root user.
#   docker build -t pgring .
#   docker run --rm -p 6432:6432 -v $PWD/my-pgring.yaml:/etc/pgring/pgring.yaml:ro pgring
# The built-in config (config/pgring.yaml) listens on 127.0.0.1:6432 only; mount a config with
# listen: ["0.0.0.0:6432"] to reach pgring from outside the container.
# Docker 25+ (and containerd 2.0) default seccomp profiles forbid io_uring: pgring then runs on
# its epoll engine and logs it once. To keep io_uring, run with
#   --security-opt seccomp=contrib/seccomp/pgring.json      (docs/operations.md, "I/O engines")

# The Debian 12 images to build on and to run on. Where no image can be pulled, build a base
# locally (scripts/container-test.sh does: debootstrap --variant=minbase bookworm, podman import)
# and pass it: --build-arg BASE=localhost/debian:12 --build-arg RUNTIME_BASE=localhost/debian:12
ARG BASE=debian:12
ARG RUNTIME_BASE=debian:12-slim

# ---- build stage: the build dependencies of scripts/deps.sh, then scripts/build.sh release ----
FROM ${BASE} AS build
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config g++ \
      liburing-dev libyaml-cpp-dev libcli11-dev libsystemd-dev libfmt-dev libssl-dev \
      prometheus-cpp-dev libpq-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the daemon's build needs (no build directories, no tests).
COPY CMakeLists.txt ./
COPY proto/ proto/
COPY config/ config/
COPY daemon/ daemon/
COPY scripts/ scripts/
RUN scripts/build.sh release -DPGRING_TESTS=OFF \
 && strip --strip-debug build/pgring \
 && build/pgring --config config/pgring.yaml --check

# ---- runtime stage: the shared libraries and the binary ----
FROM ${RUNTIME_BASE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      liburing2 libyaml-cpp0.7 libssl3 libsystemd0 libfmt9 libprometheus-cpp-core1.0 libpq5 \
      ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin pgring
COPY --from=build /src/build/pgring /usr/local/bin/pgring
COPY config/pgring.yaml /etc/pgring/pgring.yaml
USER pgring
EXPOSE 6432
# /health on the port of the config's metrics.listen on the loopback (127.0.0.1 or 0.0.0.0):
# 9930 as in the example config, or set PGRING_HEALTH_PORT (docker run -e ...) to yours. bash's
# /dev/tcp keeps curl out of the image.
ENV PGRING_HEALTH_PORT=9930
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${PGRING_HEALTH_PORT} && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q '200 OK' <&3"]
ENTRYPOINT ["/usr/local/bin/pgring", "--config", "/etc/pgring/pgring.yaml"]
