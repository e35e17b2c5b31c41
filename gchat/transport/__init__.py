"""The transports: the connection base every client extends, TLS, WebSocket,
HTTP (the page, the upgrade, /healthz and /metrics) and the PROXY header
stage.  They speak to the hub through events.py alone."""
