"""Real implementations of kiosk.app.ports: camera + kiosk.vision, the firmware
bridge's local HTTP API, the insurance centre and the bank over HTTP."""
