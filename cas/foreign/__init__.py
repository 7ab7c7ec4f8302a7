"""Moving in from other model stores: a Hugging Face hub cache (``hf``) and a BentoML model store (``bento``).

Each reads the other store through that library's own API where it is
installed and stores the model with ``LocalCache.add``, which copies the
bytes: the other store is never modified, and nothing in cas is linked to it.
Neither touches the network.
"""
