"""Export: a finished run taken out of sftlib, to llama.cpp and Ollama, and checked there.

- `converter`: llama.cpp's HF-to-GGUF converter, installed and run in a folder of its own;
- `modelfile`: the Ollama Modelfile beside the GGUF;
- `gguf`: a run's merged model converted to GGUF, written whole or not at all;
- `llama_cpp`: the GGUF run by llama.cpp (llama-cpp-python), prompts rendered by its own template.
"""

__all__ = ["converter", "gguf", "llama_cpp", "modelfile"]
