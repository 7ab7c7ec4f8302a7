"""The content formats, pure: chunks, the codec, trees, tags, refs and selections."""
