"""Moving models between the local cache and a repository: pull, push, prune and export files."""
