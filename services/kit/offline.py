"""Offline switches: nothing in QuietLine may reach the internet at run time.

Every entry point calls `enforce_offline()` before importing model libraries, so Hugging Face,
transformers, sentence-transformers and tokenizers only ever read local files.
"""

import os

OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # tldextract (used by Presidio) fetches the public suffix list unless given no URLs: use its bundled copy.
    "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": "",
}


def enforce_offline() -> None:
    """Set the offline switches in this process (and so in every child it starts)."""
    os.environ.update(OFFLINE_ENVIRONMENT)
