# Dockerfile - perimd as a FROM-scratch image: one static binary, its
# configuration, nothing else (no shell, no libc, no CA bundle).
#
# Build the binary first, then the image from this directory (the build
# context; no network is used):
#   ./build.sh static              # or: ./build.sh static noclamav
#   podman build -t perimd .       # or: --build-arg BIN=build/static-noclamav/perimd
#
# Run (README, "Container"): the configuration as a read-only volume over
# /etc/perimd, state in a volume, the body spool on tmpfs:
#   podman run -d --name perimd -p 25:25 -p 9125:9125 \
#     -v /srv/perimd/etc:/etc/perimd:ro -v perimd-state:/var/lib/perimd \
#     --tmpfs /var/spool/perimd:mode=0700,uid=65534,gid=65534 perimd
#
# perimd runs as 65534 from the start, so it cannot bind port 25 by
# itself: Docker (20.10+) opens ports from 0 in a container's own network
# namespace; with podman, or with --network host, add
# --sysctl net.ipv4.ip_unprivileged_port_start=25 (own namespace) or
# --cap-add NET_BIND_SERVICE, or listen on a high port (smtpd_listen).
FROM scratch
ARG BIN=build/static/perimd
COPY ${BIN} /perimd
COPY deploy/perimd.conf /etc/perimd/perimd.conf
# Empty directories owned by the run-time user (a scratch image has no
# mkdir, and perimd, not root, cannot create them under /var).
COPY --chown=65534:65534 deploy/state/ /var/lib/perimd/
COPY --chown=65534:65534 deploy/spool/ /var/spool/perimd/
USER 65534:65534
VOLUME ["/var/lib/perimd", "/var/spool/perimd"]
EXPOSE 25 9125
# /healthz through perimd itself: 200 while accepting mail, 503 while
# starting or draining (scratch has no curl or shell).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
	CMD ["/perimd", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/perimd", "-f"]
CMD ["-c", "/etc/perimd/perimd.conf"]
