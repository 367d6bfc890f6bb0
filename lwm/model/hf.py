def from_hf_llama(*a, **k): raise NotImplementedError
def to_hf_llama(*a, **k): raise NotImplementedError
