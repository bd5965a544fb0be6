from .hashee_summarization import HashEESummarizationTask  # noqa: F401
