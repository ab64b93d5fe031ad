"""Getting model files: the catalogue (resources/catalogue.json), downloads from the Hugging Face Hub
that resume and are checked against the Hub's sha256, and the model folders users already have
(A1111, ComfyUI, LATENTDESK_MODEL_DIRS)."""
