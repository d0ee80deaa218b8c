"""The bundled demo model: its procedural data, tokenizer, training and export (issue #3)."""
