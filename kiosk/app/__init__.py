"""The application on the terminal: the counter flow, the POS/HIS API, the demo.

`flow` is the pure state machine of one payment session; `session` drives it
against ports (`ports`), with real adapters in `adapters`; `journal` makes it
durable; `pos_api` is the HTTP face towards the pharmacy/hospital system.
"""
