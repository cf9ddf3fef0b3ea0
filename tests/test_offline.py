"""Nothing reaches the internet: every model the cpu profile uses loads and runs inside a network
namespace that has no network at all (only a loopback), and the processes the appliance starts carry
the offline switches."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from services.appliance.supervisor import Supervisor
from services.kit.config import load_settings
from services.kit.offline import OFFLINE_ENVIRONMENT

REPO_ROOT = Path(__file__).resolve().parents[1]

# Loads each model through the same loader its service uses, and runs it once.
LOAD_EVERY_MODEL = textwrap.dedent("""
    import asyncio, json, socket, sys
    import numpy as np
    from services.kit.offline import enforce_offline
    enforce_offline()
    from services.kit.config import load_settings
    settings = load_settings(profile="cpu")
    state = sys.argv[1]

    # Prove the sandbox first: an outside address must be unreachable from here.
    try:
        socket.create_connection(("1.1.1.1", 443), timeout=2).close()
        sys.exit("network is reachable: the sandbox is not isolated")
    except OSError:
        pass

    from services.asr.languages import RecognizerSet
    recognizers = RecognizerSet.load(settings.asr, state)  # tiny.en and the multilingual whisper-base
    assert recognizers.multilingual is not None
    recognizers.warm_up()
    from services.tts.synthesizer import Synthesizer
    synthesizer = Synthesizer.load(settings.tts.voice, state, 1)
    voice = synthesizer.voice(settings.tts.voice)
    audio = synthesizer.synthesize_sentence(voice, "Your card has been blocked.")
    from services.knowledge.embedder import Embedder
    async def embed():
        embedder = await Embedder.load(settings.knowledge.embedding_model, state)
        return await embedder.embed_query("lost card")
    vector = asyncio.run(embed())
    from models import resolve_model
    gguf = resolve_model(settings.llm.model, state).path
    from llama_cpp import Llama
    llm = Llama(str(gguf), n_ctx=256, n_threads=1, verbose=False)
    text = llm("The bank is open", max_tokens=4)["choices"][0]["text"]
    print(json.dumps({"tts_samples": int(audio.size), "embedding": int(vector.size), "llm_chars": len(text)}))
""")


@pytest.mark.skipif(shutil.which("unshare") is None, reason="util-linux unshare is needed to cut the network")
def test_every_cpu_model_loads_and_runs_with_no_network(tmp_path):
    command = ["unshare", "--net", "sh", "-c", 'ip link set lo up 2>/dev/null; exec "$@"', "sh",
               sys.executable, "-c", LOAD_EVERY_MODEL, str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = result.stdout.strip().splitlines()[-1]
    assert '"tts_samples": 0' not in report and '"embedding": 384' in report, report


def test_the_supervisor_starts_services_with_the_offline_switches(tmp_path):
    supervisor = Supervisor(load_settings(profile="cpu"))
    environment = supervisor.child_environment(dsn="postgresql://unused")
    for name, value in OFFLINE_ENVIRONMENT.items():
        assert environment[name] == value
