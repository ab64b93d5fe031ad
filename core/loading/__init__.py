"""Model files → a DiffusionModel: the safetensors reader, diffusers folders, key and config converters,
embedded configs, the prediction type, and the weights adopted into networks built on the meta device."""
