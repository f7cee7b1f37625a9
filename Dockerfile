# tutti on Debian 12. Build with `docker build -t tutti .` from the
# repository root. The configuration is read from /etc/tutti/tutti.json,
# which the Helm chart mounts from a ConfigMap.

FROM debian:12 AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential pkg-config \
        libmicrohttpd-dev libnghttp2-dev libhttp-parser-dev libc-ares-dev \
        libjansson-dev libuv1-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY gateway ./gateway
COPY clients ./clients
RUN make -j"$(nproc)" build/tutti

FROM debian:12-slim
# The shared libraries that build/tutti links against (Debian 12 names).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        libmicrohttpd12 libnghttp2-14 libhttp-parser2.9 libc-ares2 \
        libjansson4 libuv1 libssl3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# A numeric user, so that Kubernetes can check runAsNonRoot.
RUN groupadd --system --gid 10001 tutti \
    && useradd --system --uid 10001 --gid tutti --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin tutti
COPY --from=build /src/build/tutti /usr/local/bin/tutti
USER 10001:10001
EXPOSE 8080 9901
CMD ["tutti", "--config", "/etc/tutti/tutti.json"]
