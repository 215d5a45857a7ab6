"""The demo's closing table: each device's personalisation of the final model."""

from loopback.demo import format_personal


def test_the_personalisation_table_names_the_model_predict_uses() -> None:
    records = {
        "Cleveland": {
            "held_out_rows": 45,
            "global_accuracy": 0.8,
            "personal_accuracy": 0.8222,
            "used": True,
        },
        "Switzerland": {
            "held_out_rows": 3,
            "global_accuracy": 1.0,
            "personal_accuracy": None,  # too few rows: not personalised
            "used": False,
        },
    }

    lines = format_personal(records).splitlines()

    assert lines[2].split() == ["Cleveland", "45", "80.0%", "82.2%", "personal"]
    assert lines[3].split() == ["Switzerland", "3", "100.0%", "-", "global"]
