"""The bounds on a request's LoRAs, without torch: core/request.py checks requests before the engine loads."""

MAX_WEIGHT = 100.0   # far beyond any useful strength (usual: -2..2); a typo like 80 instead of 0.8 is refused
MAX_LORAS = 32       # at once; each costs a copy of the layers it touches, and 32 is past any real prompt
