"""Small archives in the real layouts of the datasets' sources, and a real HTTP server on 127.0.0.1.

Layouts follow shared/reference/reference-facts.md section 7: PraNet's TrainDataset.zip
(``TrainDataset/{images,masks}``) and TestDataset.zip (five folders), the VM-UNet ISIC archive
(``data/isic2017/{train,val}/{images,masks}``, masks ``ISIC_<id>_segmentation.png``), and the official
ISIC challenge zips (JPEG images beside superpixel PNGs and a metadata CSV; ground truth zips).
File names follow the real patterns: Kvasir ids, numbered CVC/ETIS frames, ISIC_<7 digits>.
``write_raw_zip`` and ``deflated_zeros`` craft zip bombs (and headers that lie about sizes) in well
under a second.
"""
from __future__ import annotations

import contextlib
import http.server
import io
import struct
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

PRANET_TEST_FOLDERS = {
    "cvc300": "CVC-300",
    "clinicdb": "CVC-ClinicDB",
    "colondb": "CVC-ColonDB",
    "etis": "ETIS-LaribPolypDB",
    "kvasir": "Kvasir",
}
KVASIR_IDS = ["cju0qkwl35piu0993l0dewei2", "cju0qoxqj9q6s0835b43399p4", "cju0roawvklrq0799vmjorwfv",
              "cju0rx1idathl0835detmsp84", "cju0s2a9ekvms080138tjjpxr", "cju0s690hkp960855tjuaqvv0"]


def encode(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def gradient_like(encoded_mask: bytes) -> bytes:
    """A grayscale ramp of the size of an encoded mask: a file that is not a mask at all."""
    width, height = Image.open(io.BytesIO(encoded_mask)).size
    return encode(np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1)))


def sample_pair(seed: int, height: int = 24, width: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """A random RGB image and a binary 0/255 mask with a rectangle of foreground."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), np.uint8)
    top, left = rng.integers(2, height // 2), rng.integers(2, width // 2)
    mask[top: top + height // 3, left: left + width // 3] = 255
    return image, mask


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


MIB = 1 << 20


def deflated(data: bytes) -> tuple[bytes, int, int]:
    """(raw deflate data, CRC-32, size) of ``data``, as a zip member holds them."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush(), zlib.crc32(data), len(data)


def deflated_zeros(mebibytes: int) -> tuple[bytes, int, int]:
    """(raw deflate data, CRC-32, size) of ``mebibytes`` MiB of zeros: every MiB ends with a full flush,
    so its compressed form is the same ~1 KB block repeated (1.5 GiB of zeros in 1.6 MB)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(MIB)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(mebibytes):
        crc = zlib.crc32(zeros, crc)
    return block * mebibytes + compressor.flush(), crc, mebibytes * MIB


def write_raw_zip(path: Path, members: list[tuple[str, tuple[bytes, int, int]]],
                  declared: dict[str, int] | None = None) -> Path:
    """A zip of deflated members (``deflated``/``deflated_zeros`` output), written field by field so that
    ``declared[name]`` can replace the uncompressed size both headers state (a header that lies)."""
    declared = declared or {}
    body, directory = bytearray(), bytearray()
    for name, (data, crc, size) in members:
        encoded, stated = name.encode(), declared.get(name, size)
        offset = len(body)
        body += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(data), stated, len(encoded), 0)
        body += encoded + data
        directory += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, len(data), stated,
                                 len(encoded), 0, 0, 0, 0, 0, offset) + encoded
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(directory), len(body), 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(body + directory + end))
    return path


def pair_members(image_dir: str, mask_dir: str, ids: list[str], seed: int, image_ext: str = ".png",
                 mask_ext: str = ".png", mask_suffix: str = "") -> dict[str, bytes]:
    image_format = {".png": "PNG", ".jpg": "JPEG", ".tif": "TIFF", ".bmp": "BMP"}
    members = {}
    for index, identifier in enumerate(ids):
        image, mask = sample_pair(seed * 1000 + index, 20 + index % 5, 26 + index % 3)
        members[f"{image_dir}/{identifier}{image_ext}"] = encode(image, image_format[image_ext])
        members[f"{mask_dir}/{identifier}{mask_suffix}{mask_ext}"] = encode(mask, image_format[mask_ext])
    return members


def pranet_train_members(n_kvasir: int = 3, n_clinicdb: int = 2) -> dict[str, bytes]:
    ids = KVASIR_IDS[:n_kvasir] + [str(i) for i in range(1, n_clinicdb + 1)]
    return pair_members("TrainDataset/images", "TrainDataset/masks", ids, seed=1)


def pranet_test_members(count: int = 2) -> dict[str, bytes]:
    members = {}
    for seed, (dataset, folder) in enumerate(PRANET_TEST_FOLDERS.items(), 10):
        ids = KVASIR_IDS[-count:] if dataset == "kvasir" else [str(i) for i in range(1, count + 1)]
        # CVC-ClinicDB was distributed as TIFF: keep .tif masks in the fixture.
        mask_ext = ".tif" if dataset == "clinicdb" else ".png"
        members |= pair_members(f"TestDataset/{folder}/images", f"TestDataset/{folder}/masks", ids, seed,
                                mask_ext=mask_ext)
    return members


def isic_ids(start: int, count: int) -> list[str]:
    return [f"ISIC_{start + i:07d}" for i in range(count)]


def vmunet_isic_members(n_train: int = 4, n_test: int = 2) -> dict[str, bytes]:
    members = {}
    for seed, folder in enumerate(("isic2017", "isic2018"), 20):
        for split, ids in (("train", isic_ids(0, n_train)), ("val", isic_ids(n_train, n_test))):
            members |= pair_members(f"data/{folder}/{split}/images", f"data/{folder}/{split}/masks", ids,
                                    seed + (split == "val") * 5, mask_suffix="_segmentation")
    return members


def isic_challenge_archives(folder: Path, count: int = 5) -> dict[str, Path]:
    """The eight official zips (2017 and 2018, training + validation), ``count`` images per part."""
    parts = [
        ("ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth", 0),
        ("ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth", 1000),
        ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth", 0),
        ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth", 1000),
    ]
    written = {}
    for seed, (images, masks, start) in enumerate(parts, 30):
        ids = isic_ids(start, count)
        members = pair_members(images, masks, ids, seed, image_ext=".jpg", mask_suffix="_segmentation")
        image_members = {k: v for k, v in members.items() if k.startswith(images + "/")}
        mask_members = {k: v for k, v in members.items() if k.startswith(masks + "/")}
        for identifier in ids:  # the challenge zips also hold superpixel maps and metadata
            image_members[f"{images}/{identifier}_superpixels.png"] = encode(sample_pair(7)[0])
        image_members[f"{images}/{images}_metadata.csv"] = b"image_id,age_approximate,sex\n"
        mask_members[f"{masks}/LICENSE.txt"] = b"CC-BY-NC"
        written[images + ".zip"] = write_zip(folder / f"{images}.zip", image_members)
        written[masks + ".zip"] = write_zip(folder / f"{masks}.zip", mask_members)
    return written


def real_layout_archives(folder: Path) -> dict[str, Path]:
    """TrainDataset.zip, TestDataset.zip and isic_vmunet.zip in ``folder``."""
    return {
        "TrainDataset.zip": write_zip(folder / "TrainDataset.zip", pranet_train_members()),
        "TestDataset.zip": write_zip(folder / "TestDataset.zip", pranet_test_members()),
        "isic_vmunet.zip": write_zip(folder / "isic_vmunet.zip", vmunet_isic_members()),
    }


FIXTURE_COUNTS = {"polyp_train": 5, "kvasir": 2, "clinicdb": 2, "colondb": 2, "etis": 2, "cvc300": 2,
                  "isic17": 6, "isic18": 6}


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "ArchiveServer"

    def do_GET(self):  # noqa: N802 - http.server's naming
        name = self.path.lstrip("/")
        self.server.requests.append(name)
        path = self.server.directory / name
        if "/" in name or not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.server.cuts.get(name, 0) > 0:
            self.server.cuts[name] -= 1
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(data)

    def do_HEAD(self):  # noqa: N802
        self.send_error(405)

    def log_message(self, *args):
        pass


class ArchiveServer(http.server.ThreadingHTTPServer):
    """Serves the files of ``directory`` by name; ``cuts[name] = k`` cuts the next k transfers halfway."""

    daemon_threads = True

    def __init__(self, directory: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.directory = Path(directory)
        self.requests: list[str] = []
        self.cuts: dict[str, int] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextlib.contextmanager
def serve(directory: Path):
    server = ArchiveServer(directory)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
