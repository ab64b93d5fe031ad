"""The built-in model's world (docs/SHAPES.md): one flat shape on a flat background.

    world     the palette, shapes, sizes, positions; sample_scene() and render()
    captions  scene -> caption, with training and held-out templates
    grammar   captions as people write them (any order, joiners, synonyms), with held-out structures
    dataset   ShapesDataset (item i is a pure function of (seed, i)) and write_folder()
    checker   measure() reads an image back into words; score() compares with a caption's scene
"""
