# hsm-ocsp responder image. Every build step is in deploy/docker/build-image.sh,
# which tests/test_deploy.py also runs on the host (no Docker engine needed).
FROM debian:bookworm-slim

COPY pyproject.toml README.md constraints.txt /src/
COPY hsm_ocsp /src/hsm_ocsp
COPY softhsm /src/softhsm
COPY deploy/docker /src/deploy/docker
RUN HSM_OCSP_USER=hsm-ocsp /src/deploy/docker/build-image.sh /src /opt/hsm-ocsp \
    && rm -rf /src

ENV PATH=/opt/hsm-ocsp/venv/bin:$PATH \
    SOFTHSM2_CONF=/var/lib/hsm-ocsp/token/softhsm2.conf \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/hsm-ocsp
EXPOSE 8080
ENTRYPOINT ["hsm-ocsp"]
CMD ["serve", "--config", "/etc/hsm-ocsp/config.toml"]
