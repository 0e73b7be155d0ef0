"""The pieces of ``scripts/train_tiny_model.py``, which trains jaxllm's default model.

* ``chat_format``: special tokens and the chat template;
* ``corpus``: the standard-library files used as text, and chat examples built from them;
* ``tokenizer``: the byte-level BPE tokenizer and the training token streams;
* ``model``: a minimal Llama in pure JAX (Hugging Face parameter names and layouts);
* ``training``: optimizer, batches, the training loop and the held-out evaluation;
* ``export``: the Hugging Face checkpoint and its check against transformers;
* ``samples``: greedy samples of the exported checkpoint;
* ``model_card``: the ``README.md`` written next to the weights.
"""
