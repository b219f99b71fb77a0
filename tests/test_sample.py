"""cachefs.devtools.sample: deterministic datasets, the real TFRecord framing and its CRC checks."""
import io
import struct

import pytest

from cachefs.devtools import sample

SPEC = sample.DatasetSpec(num_images=40, num_classes=4, seed=7, shard_bytes=1_000_000)


def test_crc32c_is_the_castagnoli_polynomial_and_masking_matches_tensorflow():
    assert sample.crc32c.crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
    crc = 0xE3069283
    assert sample.masked_crc32c(b"123456789") == ((((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)
    assert sample.masked_crc32c(b"") == 0xA282EAD8


def test_frame_layout_is_length_crc_data_crc():
    framed = sample.frame_record(b"hello")
    assert len(framed) == 8 + 4 + 5 + 4
    assert struct.unpack("<Q", framed[:8])[0] == 5
    assert struct.unpack("<I", framed[8:12])[0] == sample.masked_crc32c(framed[:8])
    assert framed[12:17] == b"hello"
    assert struct.unpack("<I", framed[17:])[0] == sample.masked_crc32c(b"hello")


def test_shards_round_trip_every_record_in_order():
    shards = list(sample.iter_tfrecord_shards(SPEC))
    assert len(shards) > 1 and all(k.startswith("tfrecord/train-") for k, _ in shards)
    assert shards[0][0].endswith(f"-of-{len(shards):05d}.tfrecord")
    records = [r for _, data in shards for r in sample.parse_tfrecords(data)]
    assert records == [sample.make_record(SPEC, i) for i in range(SPEC.num_images)]


@pytest.mark.parametrize("offset, message", [(3, "length CRC"), (12 + 100, "data CRC")])
def test_a_flipped_byte_is_detected(offset, message):
    data = bytearray(sample.frame_record(sample.make_record(SPEC, 0)))
    data[offset] ^= 0x01
    with pytest.raises(sample.TFRecordError, match=message):
        sample.parse_tfrecords(bytes(data))


def test_truncation_is_detected():
    data = sample.frame_record(b"x" * 100)
    for cut in (5, 20, len(data) - 1):
        with pytest.raises(sample.TFRecordError, match="truncated"):
            list(sample.read_tfrecords(io.BytesIO(data[:cut])))


def test_records_are_jpeg_sized_distinct_and_deterministic():
    sizes = [len(sample.make_record(SPEC, i)) for i in range(SPEC.num_images)]
    assert all(0.5 * sample.MEAN_RECORD_BYTES <= s < 1.5 * sample.MEAN_RECORD_BYTES for s in sizes)
    assert 0.8 < sum(sizes) / len(sizes) / sample.MEAN_RECORD_BYTES < 1.2
    assert sample.make_record(SPEC, 1) == sample.make_record(sample.DatasetSpec(40, 4, seed=7), 1)
    assert sample.make_record(SPEC, 1) != sample.make_record(SPEC, 2)
    assert sample.make_record(SPEC, 1) != sample.make_record(sample.DatasetSpec(40, 4, seed=8), 1)


def test_records_decode_as_jpeg_when_pillow_is_there():
    Image = pytest.importorskip("PIL.Image")
    img = Image.open(io.BytesIO(sample.make_record(SPEC, 5)))
    img.load()
    assert img.format == "JPEG" and img.size == (160, 120)


def test_image_files_live_in_class_directories(tmp_path):
    files, nbytes = sample.write_local(str(tmp_path), sample.iter_image_files(SPEC))
    assert files == SPEC.num_images
    classes = sorted(p.name for p in (tmp_path / "images" / "train").iterdir())
    assert classes == [f"class_{c:04d}" for c in range(4)]
    on_disk = sorted(tmp_path.rglob("*.jpg"))
    assert len(on_disk) == files and sum(p.stat().st_size for p in on_disk) == nbytes
    assert (tmp_path / sample.image_key(SPEC, 9)).read_bytes() == sample.make_record(SPEC, 9)


def test_upload_puts_every_item_in_parallel():
    class FakeS3:
        def __init__(self):
            self.objects = {}

        def put_object(self, Bucket, Key, Body):
            self.objects[(Bucket, Key)] = Body

    s3 = FakeS3()
    items = list(sample.iter_tfrecord_shards(SPEC))
    count, nbytes = sample.upload(s3, "b", "pre/", iter(items), workers=3)
    assert count == len(items) and nbytes == sum(len(d) for _, d in items)
    assert s3.objects == {("b", "pre/" + k): d for k, d in items}


def test_upload_reraises_a_failed_put():
    class Failing:
        def put_object(self, **kw):
            raise OSError("boom")

    with pytest.raises(OSError, match="boom"):
        sample.upload(Failing(), "b", "", sample.iter_image_files(SPEC), workers=2)


def test_upload_to_moto_server():
    boto3 = pytest.importorskip("boto3")
    from cachefs.devtools.devserver import MotoServer
    with MotoServer() as server:
        s3 = boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket="data")
        spec = sample.DatasetSpec(num_images=6, num_classes=2)
        sample.upload(s3, "data", "ds/", sample.iter_image_files(spec), workers=4)
        body = s3.get_object(Bucket="data", Key="ds/" + sample.image_key(spec, 4))["Body"].read()
        assert body == sample.make_record(spec, 4)
