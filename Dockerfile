# The launcher for cron and Kubernetes: the core install (no load-test charts, no
# Redis; build with --build-arg EXTRAS=redis for a fleet that shares one limit).
#   docker build -t launcher .
#   docker run --rm -e HUAWEICLOUD_SDK_AK -e HUAWEICLOUD_SDK_SK -v "$PWD:/work" \
#       launcher run /work/nightly.jsonl --region cn-north-4 --ledger /work/ledgers/n.jsonl
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY launcher ./launcher
ARG EXTRAS=""
RUN python -m pip install --no-cache-dir --prefix=/install ".${EXTRAS:+[$EXTRAS]}"

FROM python:3.11-slim
COPY --from=build /install /usr/local
# Not root: the launcher needs no privilege; ledgers go to /ledgers (mount a volume).
RUN useradd --create-home --uid 10001 launcher \
    && mkdir /ledgers && chown launcher /ledgers
USER 10001
WORKDIR /ledgers
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["launcher"]
CMD ["--help"]
