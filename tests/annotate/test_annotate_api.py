"""The annotation server's JSON API on a real server (a free port, in a thread): embedding
cache, decode parity with SamPredictor, mask round trips, atomic writes, refused paths and
malformed requests, the token and the bind check."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from sam_lightning import ops
from sam_lightning.annotate import server as server_module
from sam_lightning.annotate.server import ServerThread, check_bind
from sam_lightning.annotate.tool import AnnotationTool
from sam_lightning.data import SA1BDataset, decode_masks, read_image, sa1b_image_id
from sam_lightning.data import sa1b as sa1b_module
from sam_lightning.inference.predictor import SamPredictor
from sam_lightning.modeling.build import build_sam


class EncoderCalls:
    """Counts forward calls of the model's image encoder."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.count = 0
        self.handle = model.image_encoder.register_forward_hook(self._hook)

    def _hook(self, *args: object) -> None:
        self.count += 1

    def close(self) -> None:
        self.handle.remove()


@pytest.fixture
def encoder_calls(model):
    calls = EncoderCalls(model)
    yield calls
    calls.close()


def masks_of(candidates: list[dict]) -> np.ndarray:
    return ops.rle_decode([c["mask"] for c in candidates]).bool().numpy()


def accept(client, name: str, mask: dict, **fields) -> requests.Response:
    body = {"mask": mask, "prompts": {"points": [[5, 6, 1]], "box": None}, "seconds": 12.5}
    return client.post(f"api/images/{name}/masks", {**body, **fields})


# ---------------------------------------------------------------------------- listing


def test_lists_images_and_serves_pixels(make_tool, serve, images):
    (images / ".hidden.png").write_bytes((images / "a.png").read_bytes())
    _, client = serve(make_tool())
    listing = client.get("api/images").json()
    assert listing == [
        {"name": "a.png", "width": 64, "height": 48, "masks": 0, "done": False},
        {"name": "b.jpg", "width": 56, "height": 40, "masks": 0, "done": False},
        {"name": "c.png", "width": 32, "height": 32, "masks": 0, "done": False},
    ]
    response = client.get("api/images/a.png/pixels")
    assert response.headers["Content-Type"] == "image/png"
    assert response.content == (images / "a.png").read_bytes()  # shown as stored
    assert client.get("api/info").json()["mode"] == "manual"


def test_rotated_jpeg_is_served_upright(make_tool, serve, images):
    """EXIF orientation 6 (rotate 90 degrees): listing, pixels and the model agree."""
    stored = Image.fromarray(np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(images / "r.jpg", exif=exif, quality=95)
    _, client = serve(make_tool())
    entry = next(e for e in client.get("api/images").json() if e["name"] == "r.jpg")
    assert (entry["width"], entry["height"]) == (20, 30)
    response = client.get("api/images/r.jpg/pixels")
    assert response.headers["Content-Type"] == "image/png"
    shown = np.array(Image.open(io.BytesIO(response.content)))
    np.testing.assert_array_equal(shown, read_image(images / "r.jpg"))


def test_new_images_appear_without_restart(make_tool, serve, images):
    _, client = serve(make_tool())
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "d.png")
    assert "d.png" in [e["name"] for e in client.get("api/images").json()]
    assert client.post("api/images/d.png/embed").status_code == 200


# ------------------------------------------------------------------ embeddings, decode


def test_second_decode_does_not_rerun_the_encoder(make_tool, serve, encoder_calls):
    _, client = serve(make_tool())
    first = client.post("api/images/a.png/embed").json()
    assert first["cached"] == "computed" and encoder_calls.count == 1
    assert client.post("api/images/a.png/embed").json()["cached"] == "memory"
    for point in ([10, 10, 1], [30, 20, 1]):
        response = client.post("api/images/a.png/decode", {"points": [point]})
        assert response.status_code == 200, response.text
        assert response.json()["latency_ms"] > 0
        assert response.headers["Server-Timing"].startswith("app;dur=")
    assert encoder_calls.count == 1


def test_decode_embeds_on_demand_and_disk_cache_survives_restart(
    make_tool, serve, images, tmp_path, encoder_calls
):
    _, client = serve(make_tool())
    assert (
        client.post("api/images/b.jpg/decode", {"points": [[3, 4, 1]]}).json()["embed_seconds"] > 0
    )
    cached = tmp_path / "out" / ".embeddings" / "b.jpg.pt"
    assert cached.is_file() and encoder_calls.count == 1
    assert not [p for p in cached.parent.iterdir() if p.name.endswith(".tmp")]
    features = torch.load(cached, weights_only=True)
    assert isinstance(features, torch.Tensor) and features.shape == (1, 256, 4, 4)

    _, again = serve(make_tool())  # a new server over the same output: read from disk
    assert again.post("api/images/b.jpg/embed").json()["cached"] == "disk"
    assert encoder_calls.count == 1

    later = cached.stat().st_mtime_ns + 10**9
    os.utime(images / "b.jpg", ns=(later, later))  # the image changed after the cache
    _, third = serve(make_tool())
    assert third.post("api/images/b.jpg/embed").json()["cached"] == "computed"
    assert encoder_calls.count == 2


def test_memory_cache_is_an_lru(make_tool, serve, encoder_calls):
    _, client = serve(make_tool(memory_cache=2, disk_cache=False))
    for name in ("a.png", "b.jpg", "a.png", "c.png", "a.png", "b.jpg"):
        client.post(f"api/images/{name}/embed")
    # a, b, (a hit), c evicts b, (a hit), b again
    assert encoder_calls.count == 4


def test_disk_cache_of_other_weights_is_cleared(make_tool, serve, images, tmp_path, model):
    _, client = serve(make_tool())
    client.post("api/images/a.png/embed")
    assert (tmp_path / "out" / ".embeddings" / "a.png.pt").is_file()
    torch.manual_seed(1)
    other_model = build_sam("vit_tiny", image_size=64)
    _, other = serve(AnnotationTool(images, tmp_path / "out", other_model))
    assert not (tmp_path / "out" / ".embeddings" / "a.png.pt").exists()
    assert other.post("api/images/a.png/embed").json()["cached"] == "computed"
    _, same = serve(make_tool())  # back to the first weights: computed again, then cached
    assert same.post("api/images/a.png/embed").json()["cached"] == "computed"
    assert same.post("api/images/b.jpg/embed").json()["cached"] == "computed"
    _, again = serve(make_tool())
    assert again.post("api/images/b.jpg/embed").json()["cached"] == "disk"


@pytest.mark.parametrize(
    "prompt",
    [
        {"points": [[20, 15, 1]], "multimask": True},
        {"points": [[20, 15, 1], [50, 30, 0]], "multimask": False},
        {"box": [5, 5, 40, 30], "multimask": True},
        {"points": [[12.5, 33.25, 1]], "box": [0, 0, 64, 48], "multimask": False},
    ],
)
def test_decode_equals_predictor(make_tool, serve, images, model, prompt):
    _, client = serve(make_tool())
    response = client.post("api/images/a.png/decode", prompt)
    assert response.status_code == 200, response.text
    candidates = response.json()["candidates"]
    predictor = SamPredictor(model)
    predictor.set_image(read_image(images / "a.png"))
    points = prompt.get("points")
    masks, scores, _ = predictor.predict(
        None if points is None else np.array([p[:2] for p in points]),
        None if points is None else np.array([p[2] for p in points]),
        None if "box" not in prompt else np.array(prompt["box"]),
        multimask_output=prompt["multimask"],
    )
    assert len(candidates) == (3 if prompt["multimask"] else 1)
    np.testing.assert_array_equal(masks_of(candidates), masks)
    np.testing.assert_allclose([c["score"] for c in candidates], scores, rtol=1e-6)
    assert [c["area"] for c in candidates] == masks.reshape(len(masks), -1).sum(1).tolist()


def test_previous_decode_feeds_back_its_logits(make_tool, serve, images, model):
    _, client = serve(make_tool())
    first = client.post("api/images/a.png/decode", {"points": [[20, 15, 1]]}).json()
    body = {
        "points": [[20, 15, 1], [40, 30, 1]],
        "multimask": False,
        "previous": first["id"],
        "previous_candidate": 2,
    }
    second = client.post("api/images/a.png/decode", body).json()
    predictor = SamPredictor(model)
    predictor.set_image(read_image(images / "a.png"))
    _, _, low_res = predictor.predict(np.array([[20, 15]]), np.array([1]))
    masks, _, _ = predictor.predict(
        np.array([[20, 15], [40, 30]]),
        np.array([1, 1]),
        mask_input=low_res[[2]],
        multimask_output=False,
    )
    np.testing.assert_array_equal(masks_of(second["candidates"]), masks)
    other = client.post("api/images/b.jpg/decode", {"points": [[3, 3, 1]], "previous": first["id"]})
    assert other.status_code == 400 and "belongs to image 'a.png'" in other.json()["error"]


# ------------------------------------------------------------------------------- masks


def test_save_load_delete_and_reopen(make_tool, serve, images, tmp_path):
    _, client = serve(make_tool())
    decoded = client.post("api/images/a.png/decode", {"points": [[20, 15, 1]]}).json()
    mask = decoded["candidates"][0]["mask"]
    response = accept(client, "a.png", mask, candidate=0, score=0.5)
    assert response.status_code == 201, response.text
    saved = response.json()
    assert saved["segmentation"] == mask
    assert (
        saved["source"] == "person" and saved["annotator"] == "alice" and saved["session"] == "s1"
    )
    assert saved["prompts"] == {"points": [[5.0, 6.0, 1]], "box": None}
    assert saved["seconds"] == 12.5 and saved["candidate"] == 0 and saved["refined"] is False
    assert saved["area"] == int(ops.rle_area([mask])[0])
    assert saved["bbox"] == ops.rle_to_bbox([mask])[0].tolist()
    assert saved["id"] == (sa1b_image_id("a") << 16)

    # uncompressed run lengths (what the page sends) are stored compressed
    dense = ops.rle_decode(mask)[0].numpy().astype(bool)
    runs = np.diff(np.flatnonzero(np.diff(np.r_[-1, dense.T.ravel(), -1]) != 0)).tolist()
    runs = ([0] if dense.T.ravel()[0] else []) + runs
    second = accept(client, "a.png", {"size": [48, 64], "counts": runs}, refined=True).json()
    assert second["segmentation"] == mask and second["id"] == saved["id"] + 1

    on_disk = json.loads((tmp_path / "out" / "a.json").read_text())
    assert [a["id"] for a in on_disk["annotations"]] == [saved["id"], second["id"]]
    assert on_disk["image"] == {
        "image_id": sa1b_image_id("a"),
        "width": 64,
        "height": 48,
        "file_name": "a.png",
    }

    assert client.delete(f"api/images/a.png/masks/{saved['id']}").json() == {"deleted": saved["id"]}
    missing = client.delete(f"api/images/a.png/masks/{saved['id']}")
    assert missing.status_code == 404 and "no mask" in missing.json()["error"]
    third = accept(client, "a.png", mask).json()
    assert third["id"] == second["id"] + 1  # ids are never reused

    _, reopened = serve(make_tool(session="s2"))  # a restarted server sees the saved masks
    annotations = reopened.get("api/images/a.png/masks").json()["annotations"]
    assert [a["id"] for a in annotations] == [second["id"], third["id"]]
    assert reopened.get("api/images").json()[0]["masks"] == 2
    assert reopened.post("api/images/a.png/done", {"done": True}).json()["done"] is True
    assert reopened.get("api/images").json()[0]["done"] is True


def test_writes_are_atomic(make_tool, serve, tmp_path, monkeypatch):
    _, client = serve(make_tool())
    mask = client.post("api/images/a.png/decode", {"points": [[20, 15, 1]]}).json()["candidates"][
        0
    ]["mask"]
    assert accept(client, "a.png", mask).status_code == 201
    output = tmp_path / "out"
    assert sorted(p.name for p in output.iterdir()) == [".embeddings", "a.json"]
    before = (output / "a.json").read_bytes()

    def fail(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sa1b_module.os, "fsync", fail)
    response = accept(client, "a.png", mask)
    assert response.status_code == 500
    assert "No space left on device" in response.json()["error"]
    assert "unchanged" in response.json()["error"]
    assert (output / "a.json").read_bytes() == before
    assert not [p.name for p in output.iterdir() if p.name.endswith(".tmp")]


def test_interrupted_write_leftovers_are_removed(make_tool, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    leftover = output / ".a.json.0123456789ab.tmp"
    leftover.write_text("{")
    make_tool()
    assert not leftover.exists()


def test_corrupt_file_is_reported_and_kept(make_tool, serve, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "a.json").write_text("{not json")
    _, client = serve(make_tool())
    response = client.get("api/images/a.png/masks")
    assert response.status_code == 409 and "not valid JSON" in response.json()["error"]
    assert accept(client, "a.png", {"size": [48, 64], "counts": [0, 48 * 64]}).status_code == 409
    assert (output / "a.json").read_text() == "{not json"


def test_output_is_an_sa1b_dataset(make_tool, serve, images, tmp_path):
    _, client = serve(make_tool())
    saved = []
    for name, point in (("a.png", [20, 15, 1]), ("b.jpg", [10, 10, 1]), ("a.png", [50, 40, 1])):
        candidates = client.post(f"api/images/{name}/decode", {"points": [point]}).json()[
            "candidates"
        ]
        best = max(candidates, key=lambda c: c["area"])
        saved.append(accept(client, name, best["mask"]).json())
    dataset = SA1BDataset(tmp_path / "out", image_root=images)  # .embeddings, _logs ignored
    assert len(dataset) == 2
    first = dataset[0]
    assert first["image_info"]["file_name"] == "a.png"
    np.testing.assert_array_equal(first["image"], read_image(images / "a.png"))
    assert [a["id"] for a in first["annotations"]] == [saved[0]["id"], saved[2]["id"]]
    np.testing.assert_array_equal(
        decode_masks(first["annotations"]).numpy(),
        ops.rle_decode([saved[0]["segmentation"], saved[2]["segmentation"]]).bool().numpy(),
    )


# ------------------------------------------------------------------- refused requests


def test_paths_outside_the_folder_are_refused(make_tool, serve, images, tmp_path):
    secret = tmp_path / "secret.png"
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(secret)
    (images / "link.png").symlink_to(secret)  # a link out of the folder
    (images / "inside.png").symlink_to(images / "c.png")  # a link within it is an image
    _, client = serve(make_tool())
    names = [e["name"] for e in client.get("api/images").json()]
    assert "link.png" not in names and "inside.png" in names
    attempts = [
        quote("../secret.png", safe=""),
        quote("../../../../etc/passwd", safe=""),
        quote(str(secret), safe=""),
        quote("/etc/passwd", safe=""),
        "link.png",
        "..",
        "%2e%2e",
        ".embeddings",
        "notes.txt",
        quote("a.png/../../secret.png", safe=""),
    ]
    for name in attempts:
        response = client.get(f"api/images/{name}/pixels")
        assert response.status_code in (400, 404), (name, response.status_code)
        assert response.headers["Content-Type"].startswith("application/json"), name
        assert b"\x89PNG" not in response.content
    for raw in ("api/images/../../etc/passwd/pixels", "api/images/%2e%2e/%2e%2e/etc/passwd"):
        response = requests.get(client.url + raw, timeout=10)
        assert response.status_code == 404 and "root:" not in response.text


DECODE, MASKS = "api/images/a.png/decode", "api/images/a.png/masks"
FULL = {"size": [48, 64], "counts": [0, 48 * 64]}  # every pixel
MALFORMED = [
    ("post", DECODE, b"{oops", "not valid JSON"),
    ("post", DECODE, [1, 2], "must be a JSON object"),
    ("post", DECODE, {}, "at least one point or a box"),
    ("post", DECODE, {"points": [[1, 2]]}, "[x, y, label]"),
    ("post", DECODE, {"points": [[1, 2, 5]]}, "label"),
    ("post", DECODE, {"points": [[100, 2, 1]]}, "outside the 64 x 48 image"),
    ("post", DECODE, {"points": [["x", 2, 1]]}, "finite number"),
    ("post", DECODE, {"points": "1,2"}, "points must be a list"),
    ("post", DECODE, {"box": [10, 10, 5, 5]}, "x0 <= x1"),
    ("post", DECODE, {"box": [1, 2, 3]}, "box must be"),
    ("post", DECODE, {"box": [0, 0, 9, 9], "multimask": "yes"}, "multimask"),
    ("post", DECODE, {"points": [[1, 1, 1]], "previous": "nope"}, "unknown previous"),
    ("post", DECODE, {"points": [[1, 1, 1]], "colour": 1}, "unknown fields"),
    ("post", MASKS, {}, "mask is missing"),
    ("post", MASKS, {"mask": "abc"}, "COCO RLE"),
    ("post", MASKS, {"mask": {"size": [4, 4], "counts": [16]}}, "differs"),
    ("post", MASKS, {"mask": {"size": [48, 64], "counts": [5, 5]}}, "sum to"),
    ("post", MASKS, {"mask": {"size": [48, 64], "counts": "\u00e9"}}, "valid RLE"),
    ("post", MASKS, {"mask": {"size": [48, 64], "counts": [3072]}}, "empty"),
    ("post", MASKS, {"mask": FULL, "source": "robot"}, "source"),
    ("post", MASKS, {"mask": FULL, "seconds": -1}, "seconds"),
    ("post", MASKS, {"mask": FULL, "prompts": [1]}, "prompts"),
    ("post", MASKS, json.dumps({"mask": FULL, "score": float("nan")}).encode(), "NaN is not"),
    ("post", "api/images/a.png/done", {"done": "yes"}, "done must be"),
    ("delete", f"{MASKS}/abc", None, "must be an integer"),
    ("get", "api/images/zzz.png/masks", None, "no image 'zzz.png'"),
    ("get", "api/nowhere", None, "Not Found"),
    ("delete", "api/images", None, "Method Not Allowed"),
]


@pytest.mark.parametrize(("method", "path", "body", "message"), MALFORMED)
def test_malformed_requests_get_4xx_with_a_message(make_tool, serve, method, path, body, message):
    _, client = serve(make_tool())
    kwargs = {}
    if isinstance(body, bytes):
        kwargs = {"data": body, "headers": {"Content-Type": "application/json"}}
    elif body is not None:
        kwargs = {"json": body}
    response = getattr(client.session, method)(client.url + path, timeout=30, **kwargs)
    assert 400 <= response.status_code < 500, response.text
    assert message in response.json()["error"]


def test_json_bodies_need_the_json_content_type(make_tool, serve):
    _, client = serve(make_tool())
    response = client.post("api/images/a.png/decode", data='{"points": [[1, 1, 1]]}',
                           headers={"Content-Type": "text/plain"})  # fmt: skip
    assert response.status_code == 415 and "application/json" in response.json()["error"]


def test_cross_origin_and_foreign_host_requests_are_refused(make_tool, serve):
    server, client = serve(make_tool())
    response = client.post(
        "api/images/a.png/decode",
        {"points": [[1, 1, 1]]},
        headers={"Origin": "http://evil.example"},
    )
    assert response.status_code == 403 and "cross-origin" in response.json()["error"]
    same = client.post(
        "api/images/a.png/decode", {"points": [[1, 1, 1]]}, headers={"Origin": server.url[:-1]}
    )
    assert same.status_code == 200
    rebinding = client.get("api/images", headers={"Host": f"evil.example:{server.port}"})
    assert rebinding.status_code == 403 and "localhost only" in rebinding.json()["error"]


def test_token_is_required_when_configured(make_tool, serve):
    server, _ = serve(make_tool(), token="s3cret-token")
    plain = requests.Session()
    missing = plain.get(server.url + "api/images", timeout=10)
    assert missing.status_code == 401 and "token" in missing.json()["error"]
    assert plain.get(server.url, timeout=10).status_code == 401
    wrong = plain.get(server.url + "api/images", headers={"X-Annotate-Token": "nope"}, timeout=10)
    assert wrong.status_code == 403 and "wrong token" in wrong.json()["error"]
    bearer = plain.get(
        server.url + "api/images", headers={"Authorization": "Bearer s3cret-token"}, timeout=10
    )
    assert bearer.status_code == 200
    # ?token= once: redirected to the bare URL with a cookie that carries the API calls
    page = plain.get(server.url + "?token=s3cret-token", timeout=10)
    assert page.status_code == 200 and page.url == server.url and "<canvas" in page.text
    assert plain.get(server.url + "api/images", timeout=10).status_code == 200
    assert plain.post(server.url + "api/images/a.png/embed", timeout=30).status_code == 200
    # the token also answers for a non-loopback Host header (a remote browser)
    remote = plain.get(
        server.url + "api/info",
        headers={"Host": "annotate.lan", "X-Annotate-Token": "s3cret-token"},
        timeout=10,
    )
    assert remote.status_code == 200


def test_non_localhost_bind_needs_a_token(make_tool):
    tool = make_tool()
    for host in ("0.0.0.0", "192.168.1.10", "::", "example.org"):
        with pytest.raises(ValueError, match="server.token"):
            check_bind(host, None)
        with pytest.raises(ValueError, match="server.token"):
            ServerThread(tool, host=host)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, None)
    check_bind("0.0.0.0", "a-token")
    with pytest.raises(ValueError, match="non-empty"):
        check_bind("0.0.0.0", " ")
    assert server_module.page_url("::1", 80, "t") == "http://[::1]:80/?token=t"


def test_static_files_only(make_tool, serve):
    _, client = serve(make_tool())
    page = client.get("")
    assert (
        page.status_code == 200 and "script-src 'self'" in page.headers["Content-Security-Policy"]
    )
    assert client.get("static/app.js").headers["Content-Type"].startswith("text/javascript")
    for name in ("server.py", "..%2Fserver.py", "index.html%00"):
        assert client.get(f"static/{name}").status_code == 404


def test_stems_must_be_unique(images, make_tool):
    (images / "a.jpg").write_bytes((images / "b.jpg").read_bytes())
    with pytest.raises(ValueError, match="would share the annotation file a.json"):
        make_tool()


def test_output_must_not_be_the_images_folder(images, model):
    with pytest.raises(ValueError, match="differ from the images folder"):
        AnnotationTool(images, images, model)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        AnnotationTool(Path(images, "missing"), images.parent / "o", model)
