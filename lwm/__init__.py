"""lwm: long-context video-language training in JAX."""
