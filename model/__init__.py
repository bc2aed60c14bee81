"""dupq's model: data, tokenizer, Siamese encoder, losses, training, evaluation and the index.

Pure PyTorch, `tokenizers` and FAISS; nothing here imports the web service.
"""
