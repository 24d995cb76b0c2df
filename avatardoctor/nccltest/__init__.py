"""The live communication test: torchrun ranks that talk as Live Avatar's TPP pipeline does."""
