# pmemd: one container per guest (its daemon), or the embedded demo.
#
#   docker build -t pmemd .                       # or: buildah bud -t pmemd .
#   docker run --rm pmemd demo                    # the embedded simulator + daemon + guest
#   docker run -v /etc/pmemd:/etc/pmemd:ro -v /var/run/pmemd:/run/pmemd -v /srv/nvdimm:/var/lib/pmemd \
#       pmemd run --config /etc/pmemd/guest-7.toml
#
# BASE may be any Debian-like image with Python >= 3.11 and its venv module (the tests
# build FROM a local debootstrap image: no registry needed). PIP_OPTIONS lets an offline
# build install from a wheels/ directory in the context: "--no-index --find-links /src".
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG PIP_OPTIONS=""

# The QMP socket (config [qmp] socket) lives under /run/pmemd by convention, so the
# HEALTHCHECK knows where to ask; override PMEMD_QMP for another path.
ENV PMEMD_HOME=/opt/pmemd \
    PATH=/opt/pmemd/bin:$PATH \
    PMEMD_QMP=/run/pmemd/qmp.sock \
    PYTHONDONTWRITEBYTECODE=1

# wheel[s]: an optional directory of wheels for offline builds (its files land in /src).
COPY pyproject.toml README.md wheel[s] /src/
COPY pmemd /src/pmemd
COPY acpi /src/acpi
COPY configs /src/configs

# hadolint ignore=SC2086
RUN python3 -m venv "$PMEMD_HOME" \
    && "$PMEMD_HOME/bin/pip" install --no-cache-dir --disable-pip-version-check $PIP_OPTIONS /src \
    && cp -r /src/configs "$PMEMD_HOME/configs" \
    && rm -rf /src \
    && groupadd --system --gid 990 pmemd \
    && useradd --system --uid 990 --gid pmemd --home-dir /var/lib/pmemd --no-create-home pmemd \
    && mkdir -p /etc/pmemd /run/pmemd /var/lib/pmemd \
    && chown pmemd:pmemd /run/pmemd /var/lib/pmemd

# Configs (read-only), sockets (QMP, simulator, xenstored), backing files.
VOLUME ["/etc/pmemd", "/run/pmemd", "/var/lib/pmemd"]

USER 990:990
WORKDIR /var/lib/pmemd

HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["pmemd", "qmp-health"]

ENTRYPOINT ["pmemd"]
# demo.py looks for configs/ beside the package, which an installed wheel has not: name it.
CMD ["demo", "--config", "/opt/pmemd/configs/example.toml"]
