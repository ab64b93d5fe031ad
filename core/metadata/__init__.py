"""What an image file says about how it was made. Import from the module that holds each part:

    core.metadata.infotext    A1111's "parameters" text <-> GenerationRequest (to_infotext, request_from_infotext)
    core.metadata.png_files   PNGs written whole and never over another file (save_png), their text read back
                              from PNG, JPEG and WebP files (read_parameters)
    core.metadata.png_text    a PNG's text chunks, read without decoding a pixel
    core.metadata.hashing     A1111's "Model hash" of a model file or folder (model_hash)
"""
