"""Feature extractors: one HDF5 file per (dataset, modality, setting) and dialogue shard.

Modules are imported on demand (each pulls in its own heavy libraries and runs in its own rule env):

    text       transformers encoders (RoBERTa, MiniLM) pooled per utterance, optional context
    finetune   optional fine-tuning of the text encoder on the train labels before extraction
    audio      openSMILE functionals
    visual     MTCNN faces -> DenseNet embeddings (denseface: the 342-d DenseNet variant)
    pickles    import / export of the community SDT / VEGA feature pickles (explicit opt-in)
"""
