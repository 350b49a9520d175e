"""The S3 warehouse: unitable writes table metadata to an S3-compatible endpoint (moto_server on
127.0.0.1) and PyIceberg, an outside reader, loads the table from there."""

from __future__ import annotations

from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.types import LongType, StringType


def test_tables_live_in_an_s3_warehouse(start_service, moto):
    moto.create_bucket("lake")
    service = start_service(
        "--warehouse", "s3://lake/wh",
        "--s3-endpoint", moto.endpoint,
        "--s3-region", "us-east-1",
        "--s3-access-key-id", "testing",
        "--s3-secret-access-key", "testing",
    )
    service.cli("table", "create", "ml.features", "--column", "user_id:int64!",
                "--column", "segment:string", "--primary-key", "user_id", check=True)

    catalog = SqlCatalog(
        "unitable",
        uri=f"sqlite:///{service.data_dir}/catalog.db",
        warehouse="s3://lake/wh",
        **{
            "s3.endpoint": moto.endpoint,
            "s3.region": "us-east-1",
            "s3.access-key-id": "testing",
            "s3.secret-access-key": "testing",
        },
    )
    table = catalog.load_table("ml.features")
    assert table.metadata_location.startswith("s3://lake/wh/ml/features/metadata/")
    assert table.location().rstrip("/") == "s3://lake/wh/ml/features"
    fields = {f.name: f for f in table.schema().fields}
    assert isinstance(fields["user_id"].field_type, LongType) and fields["user_id"].required
    assert isinstance(fields["segment"].field_type, StringType)
    assert table.schema().identifier_field_ids == [fields["user_id"].field_id]
    assert table.scan().to_arrow().num_rows == 0

    # Schema changes write new metadata to S3 too, and survive a restart.
    service.cli("table", "add-column", "ml.features", "--column", "score:int32", check=True)
    service.restart()
    table = catalog.load_table("ml.features")
    assert "score" in {f.name for f in table.schema().fields}

    # Dropping purges the files from the bucket.
    metadata_location = table.metadata_location
    service.cli("table", "drop", "ml.features", check=True)
    io = table.io
    assert not io.new_input(metadata_location).exists()


def test_unreachable_s3_fails_create_with_a_clear_error(start_service, moto):
    # The bucket does not exist: the create fails, says so, and leaves no table behind.
    service = start_service(
        "--warehouse", "s3://missing-bucket/wh",
        "--s3-endpoint", moto.endpoint,
        "--s3-region", "us-east-1",
        "--s3-access-key-id", "testing",
        "--s3-secret-access-key", "testing",
    )
    result = service.cli("table", "create", "ml.f", "--column", "id:int64!")
    assert result.returncode == 1
    assert "missing-bucket" in result.stderr or "bucket" in result.stderr.lower(), result.stderr
    assert service.cli("table", "list", check=True).stdout.strip() == ""
