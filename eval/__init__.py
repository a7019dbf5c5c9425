"""Corpus encoding job, retrieval scoring, metrics, baselines, reports and faiss export."""
