"""Decoding: one greedy decoding core (core: batched greedy, end tokens, text) shared by ``decode`` and the layer
search, the decode runner, the layer search's round loop (rounds), prompt embeddings (embeds), and what feeds
them (audio, segmenter, inputs)."""
