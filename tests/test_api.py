"""The HTTP API against a real server process on loopback (gunicorn, the shipped generator, the real
base model), driven by the real `openai` client, `requests` and `peft`."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import requests

from hyperadapter.config import REPO_ROOT, default_data_root

KEYS = {"acme": "key-acme-123", "globex": "key-globex-456"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp_path: Path, **env_overrides) -> tuple[subprocess.Popen, str]:
    root = tmp_path / "root"
    root.mkdir()
    (root / "models").symlink_to(default_data_root() / "models")  # the converted base, shared with the tests
    port = _free_port()
    env = {**os.environ, "HYPERADAPTER_DATA_ROOT": str(root), "HYPERADAPTER_PORT": str(port),
           "HYPERADAPTER_API_KEYS": ",".join(f"{k}:{t}" for t, k in KEYS.items()),
           "HYPERADAPTER_MAX_CONTEXT_CHARS": "20000", "HYPERADAPTER_MAX_REQUEST_BYTES": "200000",
           "HYPERADAPTER_TORCH_THREADS": "2", **env_overrides}
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "hyperadapter.cli", "serve"], env=env, cwd=REPO_ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600  # a busy machine can take minutes to load the model
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("server exited:\n" + (tmp_path / "server.log").read_text()[-3000:])
            try:
                if requests.get(url + "/healthz", timeout=5).status_code == 200:
                    return proc, url
            except requests.RequestException:  # not listening yet, or the worker is still loading the model
                time.sleep(0.5)
        raise RuntimeError("server did not start:\n" + (tmp_path / "server.log").read_text()[-3000:])
    except BaseException:
        proc.kill()
        proc.wait()
        raise


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    proc, url = start_server(tmp)
    yield url
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=90)


def auth(tenant: str = "acme") -> dict:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


def post(url: str, path: str, body, tenant: str = "acme", **kw):
    return requests.post(url + path, json=body, headers=auth(tenant), timeout=300, **kw)


def client(url: str, tenant: str = "acme"):
    from openai import OpenAI
    return OpenAI(base_url=url + "/v1", api_key=KEYS[tenant], max_retries=0, timeout=300)


TASK = "Translate the user's sentence into French. Reply with the French sentence only."


@pytest.fixture(scope="module")
def task_adapter(server):
    r = post(server, "/v1/adapters", {"kind": "task", "context": TASK})
    assert r.status_code in (200, 201), r.text
    return r.json()


def test_same_context_twice_is_a_cache_hit(server):
    context = "Classify the sentiment of a movie review as positive or negative."
    first = post(server, "/v1/adapters", {"kind": "task", "context": context})
    second = post(server, "/v1/adapters", {"kind": "task", "context": context + "  "})  # whitespace-normalised
    assert first.status_code == 201 and first.json()["cache_hit"] is False
    assert second.status_code == 200 and second.json()["cache_hit"] is True
    assert second.json()["id"] == first.json()["id"] and second.json()["similarity"] == pytest.approx(1.0)
    forced = post(server, "/v1/adapters", {"kind": "task", "context": context, "reuse": False})
    assert forced.status_code == 201 and forced.json()["id"] != first.json()["id"]


def test_openai_client_chats_with_an_adapter_streams_and_counts(server, task_adapter):
    oa = client(server)
    messages = [{"role": "user", "content": "I like green apples."}]
    reply = oa.chat.completions.create(model=task_adapter["id"], messages=messages, max_tokens=24, temperature=0)
    text = reply.choices[0].message.content
    assert text and reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 5 and 0 < reply.usage.completion_tokens <= 24
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    base = oa.chat.completions.create(model="base", messages=messages, max_tokens=24, temperature=0)
    assert base.choices[0].message.content != text  # the adapter changes the answer
    chunks = list(oa.chat.completions.create(model=task_adapter["id"], messages=messages, max_tokens=24,
                                             temperature=0, stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    completion = oa.completions.create(model=task_adapter["id"], prompt="The capital of France is", max_tokens=8,
                                       temperature=0)
    assert completion.choices[0].text and completion.usage.completion_tokens > 0
    loop = "The cat. The cat. The cat. The cat."
    plain = oa.completions.create(model="base", prompt=loop, max_tokens=8, temperature=0).choices[0].text
    penalised = oa.completions.create(model="base", prompt=loop, max_tokens=8, temperature=0,
                                      presence_penalty=2.0).choices[0].text
    assert plain.count("The cat") > penalised.count("The cat")  # the client's penalty arrives


def test_a_chat_adapter_gets_its_kinds_penalties_unless_the_request_sets_its_own(server):
    from hyperadapter.decoding import PENALTIES
    frequency, presence = PENALTIES["conversation"]
    r = post(server, "/v1/users/carol/messages", {"messages": [{"role": "user", "content": "My cat is Pepper."}]})
    assert r.status_code == 200, r.text
    oa, loop = client(server), "The cat. The cat. The cat. The cat."

    def complete(**penalties):
        return oa.completions.create(model="user:carol", prompt=loop, max_tokens=12, temperature=0,
                                     **penalties).choices[0].text
    unset = complete()
    assert unset == complete(frequency_penalty=frequency, presence_penalty=presence)
    assert unset != complete(frequency_penalty=0.0, presence_penalty=0.0)  # an explicit 0 is honoured
    base = [oa.completions.create(model="base", prompt=loop, max_tokens=12, temperature=0, **p).choices[0].text
            for p in ({}, {"frequency_penalty": 0.0, "presence_penalty": 0.0})]
    assert base[0] == base[1]  # the base has no kind: 0, as OpenAI's


def test_inline_context_creates_and_applies_in_one_call(server):
    r = post(server, "/v1/chat/completions", {
        "model": "base", "messages": [{"role": "user", "content": "What is the answer?"}], "max_tokens": 8,
        "temperature": 0, "context": {"kind": "document", "text": "The secret answer is forty-two. " * 3}})
    assert r.status_code == 200, r.text
    assert r.json()["adapter"]["kind"] == "document" and r.json()["choices"][0]["message"]["content"]


def test_peft_loads_the_zip(server, task_adapter, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    r = requests.get(f"{server}/v1/adapters/{task_adapter['id']}/peft", headers=auth(), timeout=60)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/zip"
    zipfile.ZipFile(io.BytesIO(r.content)).extractall(tmp_path / "peft")
    model = AutoModelForCausalLM.from_pretrained(default_data_root() / "models" / "SmolLM2-135M-Instruct")
    peft_model = PeftModel.from_pretrained(model, tmp_path / "peft")
    modules = {n.rsplit(".", 1)[-1] for n, _ in peft_model.named_modules() if n.endswith(("lora_A", "lora_B"))}
    assert modules == {"lora_A", "lora_B"}
    with torch.no_grad():
        out = peft_model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(out).all()


KESSEL = ("The Kessel mill at Drau was rebuilt in 1923 by the carpenter Ida Wren. "
          "The town's football club plays in green shirts. Its bakery sells rye bread every morning.")


def test_a_document_is_answered_by_the_adapter_of_the_sentence_nearest_the_question(server, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    created = post(server, "/v1/adapters", {"kind": "document", "context": KESSEL})
    assert created.status_code == 201 and created.json()["routes"] == 3, created.text
    adapter_id = created.json()["id"]
    assert requests.get(f"{server}/v1/adapters/{adapter_id}", headers=auth(), timeout=60).json()["routes"] == 3
    questions = ["Who rebuilt the mill?", "What colour are the football club's shirts?", "What does the bakery sell?"]
    differs = 0
    for i, question in enumerate(questions):
        body = {"model": adapter_id, "messages": [{"role": "system", "content": "Answer briefly."},
                                                  {"role": "user", "content": question}],
                "max_tokens": 12, "temperature": 0}
        routed = post(server, "/v1/chat/completions", body).json()
        assert routed["route"]["sentence"] == i and routed["route"]["routes"] == 3, routed
        assert 0 < routed["route"]["similarity"] <= 1
        whole = post(server, "/v1/chat/completions", {**body, "route": False}).json()
        assert "route" not in whole
        differs += routed["choices"][0]["message"]["content"] != whole["choices"][0]["message"]["content"]
    assert differs >= 2  # a sentence's adapter is not the document's
    stream = post(server, "/v1/chat/completions", {**body, "stream": True}, stream=True)
    first = json.loads(next(line for line in stream.iter_lines() if line.startswith(b"data: "))[6:])
    assert first["route"]["sentence"] == 2  # a stream says its route in its first chunk
    stream.close()
    text = post(server, "/v1/completions", {"model": adapter_id, "prompt": questions[2], "max_tokens": 4,
                                            "temperature": 0}).json()
    assert text["route"]["sentence"] == 2
    task = post(server, "/v1/chat/completions", {"model": "base", "max_tokens": 4, "temperature": 0,
                                                 "messages": [{"role": "user", "content": "Hi"}]}).json()
    assert "route" not in task  # the base has nothing to route
    metrics = requests.get(f"{server}/metrics", timeout=60).text
    assert float(re.search(r"^hyperadapter_routed_replies_total (\S+)$", metrics, re.M).group(1)) >= 4
    # the PEFT zip carries the routes file beside the PEFT files, and peft applies the document's one adapter
    r = requests.get(f"{server}/v1/adapters/{adapter_id}/peft", headers=auth(), timeout=60)
    names = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
    assert sorted(names) == ["adapter_config.json", "adapter_model.safetensors", "adapter_routes.safetensors"]
    zipfile.ZipFile(io.BytesIO(r.content)).extractall(tmp_path / "peft")
    model = AutoModelForCausalLM.from_pretrained(default_data_root() / "models" / "SmolLM2-135M-Instruct")
    assert sum(n.endswith("lora_A") for n, _ in PeftModel.from_pretrained(model, tmp_path / "peft").named_modules())


def test_tenants_are_isolated_and_keys_required(server, task_adapter):
    aid = task_adapter["id"]
    assert requests.get(f"{server}/v1/adapters/{aid}", headers=auth("acme"), timeout=30).status_code == 200
    other = requests.get(f"{server}/v1/adapters/{aid}", headers=auth("globex"), timeout=30)
    assert other.status_code == 404 and other.json()["error"]["type"] == "not_found_error"
    chat = post(server, "/v1/chat/completions", {"model": aid, "messages": [{"role": "user", "content": "hi"}]},
                tenant="globex")
    assert chat.status_code == 404
    assert requests.delete(f"{server}/v1/adapters/{aid}", headers=auth("globex"), timeout=30).status_code == 404
    none = requests.get(f"{server}/v1/adapters/{aid}", timeout=30)
    assert none.status_code == 401 and none.json()["error"]["type"] == "authentication_error"
    wrong = requests.get(f"{server}/v1/adapters/{aid}", headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 401
    listed = requests.get(f"{server}/v1/adapters", headers=auth("globex"), timeout=30).json()
    assert aid not in [a["id"] for a in listed["data"]]


def test_users_facts_change_their_answers_only_and_forgetting_removes_everything(server, tmp_path):
    oa = client(server)
    ask = [{"role": "user", "content": "What is the name of my dog?"}]
    r = post(server, "/v1/users/bob/messages", {"messages": [{"role": "user", "content": "I like hiking in the hills."}]})
    assert r.status_code == 200, r.text
    bob_adapter = r.json()["adapter_id"]
    bob_before = oa.chat.completions.create(model="user:bob", messages=ask, max_tokens=16, temperature=0)
    base = oa.chat.completions.create(model="base", messages=ask, max_tokens=16, temperature=0)
    facts = [{"role": "user", "content": "Hi! My dog is called Biscuit."},
             {"role": "assistant", "content": "Nice to meet Biscuit!"},
             {"role": "user", "content": "I live in Lisbon and I work as a florist."}]
    r = post(server, "/v1/users/alice/messages", {"messages": facts})
    assert r.status_code == 200 and r.json()["messages"] == 3 and r.json()["routes"] == 2  # her own two messages
    first_id = r.json()["adapter_id"]
    r = post(server, "/v1/users/alice/messages", {"messages": [{"role": "user", "content": "My sister is Clara."}]})
    assert r.json()["messages"] == 4 and r.json()["adapter_id"] != first_id
    assert requests.get(f"{server}/v1/adapters/{first_id}", headers=auth(), timeout=30).status_code == 404  # retired
    alice = oa.chat.completions.create(model="user:alice", messages=ask, max_tokens=16, temperature=0)
    assert alice.choices[0].message.content != base.choices[0].message.content
    # alice's adapter routes among her three messages: the dog's question goes to the dog's message
    routed = post(server, "/v1/chat/completions", {"model": "user:alice", "messages": ask, "max_tokens": 4})
    assert routed.status_code == 200 and routed.json()["route"]["routes"] == 3
    assert routed.json()["route"]["sentence"] == 0
    # her routes span two files, the first update's (linked, not written again) and the new message's: the zip
    # carries both and their list, and they load back as her three routes
    z = requests.get(f"{server}/v1/adapters/{r.json()['adapter_id']}/peft", headers=auth(), timeout=60)
    assert z.status_code == 200
    names = set(zipfile.ZipFile(io.BytesIO(z.content)).namelist())
    assert {"adapter_routes.json", "adapter_routes.safetensors", "adapter_routes.1.safetensors"} <= names
    zipfile.ZipFile(io.BytesIO(z.content)).extractall(tmp_path / "alice")
    from hyperadapter.adapter import Adapter
    assert len(Adapter.load(tmp_path / "alice").routes.adapters) == 3
    bob_after = oa.chat.completions.create(model="user:bob", messages=ask, max_tokens=16, temperature=0)
    assert bob_after.choices[0].message.content == bob_before.choices[0].message.content
    assert requests.get(f"{server}/v1/users/bob", headers=auth(), timeout=30).json()["adapter_id"] == bob_adapter
    # another tenant's user of the same name is someone else
    assert requests.get(f"{server}/v1/users/alice", headers=auth("globex"), timeout=30).status_code == 404
    gone = requests.delete(f"{server}/v1/users/alice", headers=auth(), timeout=30)
    assert gone.status_code == 200
    after = post(server, "/v1/chat/completions", {"model": "user:alice", "messages": ask})
    assert after.status_code == 404
    assert requests.get(f"{server}/v1/adapters/{r.json()['adapter_id']}", headers=auth(), timeout=30).status_code == 404
    listed = requests.get(f"{server}/v1/adapters", params={"user": "alice"}, headers=auth(), timeout=30).json()
    assert listed["total"] == 0


BAD = [
    ("post", "/v1/adapters", "{not json", 400),
    ("post", "/v1/adapters", [1, 2], 400),
    ("post", "/v1/adapters", {"kind": 5, "context": "x"}, 422),
    ("post", "/v1/adapters", {"kind": "poem", "context": "x"}, 422),
    ("post", "/v1/adapters", {"kind": "task", "context": ""}, 422),
    ("post", "/v1/adapters", {"kind": "task", "context": "   "}, 422),
    ("post", "/v1/adapters", {"kind": "task"}, 422),
    ("post", "/v1/adapters", {"kind": "document", "context": "word " * 5000}, 413),
    ("post", "/v1/adapters", {"kind": "document", "context": "x" * 300_000}, 413),
    ("post", "/v1/adapters", {"kind": "task", "context": "ok", "user": "bad name!"}, 422),
    ("get", "/v1/adapters/does-not-exist", None, 404),
    ("get", "/v1/adapters/does-not-exist/peft", None, 404),
    ("delete", "/v1/adapters/does-not-exist", None, 404),
    ("get", "/v1/adapters?limit=0", None, 422),
    ("get", "/v1/adapters?limit=abc", None, 422),
    ("post", "/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404),
    ("post", "/v1/chat/completions", {"model": "user:nobody", "messages": [{"role": "user", "content": "hi"}]}, 404),
    ("post", "/v1/chat/completions", {"model": "base", "messages": []}, 422),
    ("post", "/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": "hi"}],
                                      "frequency_penalty": 2.5}, 422),
    ("post", "/v1/chat/completions", {"model": "base", "messages": [{"role": "robot", "content": "hi"}]}, 422),
    ("post", "/v1/chat/completions", {"model": "base", "messages": "hi"}, 422),
    ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, 422),
    ("post", "/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": "hi"}], "temperature": 5}, 422),
    ("post", "/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 422),
    ("post", "/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}, 422),
    ("post", "/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": "hi"}], "n": 2}, 422),
    ("post", "/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": "hi"}], "top_p": 0}, 422),
    ("post", "/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": "hi"}], "stop": ["a"] * 5}, 422),
    ("post", "/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}, 422),
    ("post", "/v1/chat/completions", {"model": "does-not-exist", "messages": [{"role": "user", "content": "hi"}],
                                      "context": {"kind": "task", "text": "x"}}, 422),
    ("post", "/v1/completions", {"model": "base", "prompt": ""}, 422),
    ("post", "/v1/completions", {"model": "base", "prompt": ["a", "b"]}, 422),
    ("post", "/v1/users/alice/messages", {"messages": []}, 422),
    ("post", "/v1/users/alice/messages", {"messages": [{"role": "user"}]}, 422),
    ("post", "/v1/users/bad%20name/messages", {"messages": [{"role": "user", "content": "hi"}]}, 422),
    ("delete", "/v1/users/nobody-here", None, 404),
    ("get", "/v1/nothing-here", None, 404),
]


@pytest.mark.parametrize("method, path, body, status", BAD)
def test_bad_input_gets_a_json_4xx(server, method, path, body, status):
    kwargs = {"headers": {**auth(), "Content-Type": "application/json"}, "timeout": 120}
    if body is not None:
        kwargs["data"] = body if isinstance(body, str) else json.dumps(body)
    r = requests.request(method, server + path, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] and error["message"]


def test_ops_endpoints(server):
    health = requests.get(server + "/healthz", timeout=30).json()
    assert health["status"] == "ok" and health["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    from hyperadapter.packed import fast_bf16, fast_int8  # the service serves in int8 where bf16 is slow
    assert health["generator_precision"] == ("bf16" if fast_bf16() else "int8" if fast_int8() else "float32")
    metrics = requests.get(server + "/metrics", timeout=30).text
    for name in ("hyperadapter_requests_total", "hyperadapter_request_seconds_bucket", "hyperadapter_queue_depth",
                 "hyperadapter_adapter_cache_total", "hyperadapter_generated_tokens_total"):
        assert name in metrics
    spec = requests.get(server + "/openapi.json", timeout=30).json()
    assert spec["openapi"].startswith("3.")
    for path in ("/v1/adapters", "/v1/adapters/{id}/peft", "/v1/chat/completions", "/v1/users/{name}/messages"):
        assert path in spec["paths"]
    body_schema = spec["paths"]["/v1/adapters"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert spec["components"]["schemas"][body_schema["$ref"].rsplit("/", 1)[-1]]["required"] == ["kind", "context"]


def test_queue_limit_disconnects_and_graceful_shutdown(tmp_path):
    proc, url = start_server(tmp_path, HYPERADAPTER_MAX_QUEUE="1", HYPERADAPTER_MAX_BATCH_SIZE="1",
                             HYPERADAPTER_API_KEYS="")
    try:
        # a streaming client that goes away frees its slot
        body = {"model": "base", "messages": [{"role": "user", "content": "Tell me a long story."}],
                "max_tokens": 800, "stream": True, "temperature": 0}
        with requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=300) as r:
            next(r.iter_lines())
        deadline = time.time() + 60
        while time.time() < deadline and "hyperadapter_batch_rows 0.0" not in requests.get(url + "/metrics").text:
            time.sleep(0.5)
        assert "hyperadapter_batch_rows 0.0" in requests.get(url + "/metrics").text  # long before 800 tokens
        # with one slot and a queue of one, a burst overflows: 429s with a JSON body
        statuses = []

        def call():
            r = requests.post(url + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 40}, timeout=300)
            statuses.append((r.status_code, r.json()))
        threads = [threading.Thread(target=call) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = sorted(s for s, _ in statuses)
        assert 200 in codes and 429 in codes, codes
        assert all(b["error"]["type"] == "rate_limit_error" for s, b in statuses if s == 429)
        # in-flight work finishes on SIGTERM
        result = {}

        def slow():
            r = requests.post(url + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 60}, timeout=300)
            result["status"], result["body"] = r.status_code, r.json()
        t = threading.Thread(target=slow)
        t.start()
        time.sleep(3)
        proc.send_signal(signal.SIGTERM)
        t.join()
        assert result["status"] == 200 and result["body"]["usage"]["completion_tokens"] > 0
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
