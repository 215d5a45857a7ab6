"""The node's auth key pair: OpenSSH P-384 that Flower's node auth accepts, mode 0600, kept."""

import argparse
import base64
import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge_daemon.keys import public_key_path, write_node_key


def test_private_key_is_openssh_p384_and_matches_the_public_line(tmp_path: Path) -> None:
    key = write_node_key(tmp_path / "node.key", comment="edge-daemon@pi-7")

    private = serialization.load_ssh_private_key(key.private_path.read_bytes(), password=None)
    public = serialization.load_ssh_public_key(key.public_path.read_bytes())

    assert key.private_path.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(private.curve, ec.SECP384R1)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.public_numbers() == private.public_key().public_numbers()
    # The pair works: a signature by the private half verifies with the .pub.
    public.verify(
        private.sign(b"hello", ec.ECDSA(hashes.SHA384())), b"hello", ec.ECDSA(hashes.SHA384())
    )


def test_public_file_is_one_openssh_line_with_the_comment(tmp_path: Path) -> None:
    key = write_node_key(tmp_path / "node.key", comment="edge-daemon@pi-7")

    text = key.public_path.read_text()
    kind, blob, comment = text.split()

    assert key.public_path == tmp_path / "node.key.pub" == public_key_path(key.private_path)
    assert text == key.public_line + "\n"
    assert (kind, comment) == ("ecdsa-sha2-nistp384", "edge-daemon@pi-7")
    digest = base64.b64encode(hashlib.sha256(base64.b64decode(blob)).digest()).decode()
    assert key.fingerprint == "SHA256:" + digest.rstrip("=")  # as ssh-keygen -l prints it


def test_private_key_is_mode_0600(tmp_path: Path) -> None:
    key = write_node_key(tmp_path / "keys" / "node.key", comment="")

    assert stat.S_IMODE(key.private_path.stat().st_mode) == 0o600
    assert key.public_line.count(" ") == 1  # no comment: type and key only


@pytest.mark.parametrize("existing", ["node.key", "node.key.pub"])
def test_an_existing_key_is_not_replaced_unless_forced(tmp_path: Path, existing: str) -> None:
    first = write_node_key(tmp_path / "node.key", comment="first")
    before = {path: path.read_bytes() for path in (first.private_path, first.public_path)}
    (tmp_path / ({"node.key", "node.key.pub"} - {existing}).pop()).unlink()

    with pytest.raises(FileExistsError, match=rf"{existing} already exists; pass --force"):
        write_node_key(tmp_path / "node.key", comment="second")

    assert (tmp_path / existing).read_bytes() == before[tmp_path / existing]
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]  # nothing else written


def test_force_replaces_the_pair(tmp_path: Path) -> None:
    first = write_node_key(tmp_path / "node.key", comment="first")
    second = write_node_key(tmp_path / "node.key", comment="second", force=True)

    assert second.public_line != first.public_line
    assert (tmp_path / "node.key.pub").read_text() == second.public_line + "\n"
    assert stat.S_IMODE(second.private_path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.key", "node.key.pub"]


def test_a_multi_line_comment_is_rejected_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one line"):
        write_node_key(tmp_path / "node.key", comment="a\nb")

    assert list(tmp_path.iterdir()) == []


def test_flower_accepts_the_pair(tmp_path: Path) -> None:
    # What flower-supernode and `flwr supernode register` run on these files (Flower 1.42).
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    key = write_node_key(tmp_path / "node.key", comment="edge-daemon@pi-7")
    args = argparse.Namespace(
        auth_supernode_private_key=str(key.private_path), auth_supernode_public_key=None
    )

    pair = _try_setup_client_authentication(args)
    registered = try_load_public_key(key.public_path)

    assert pair is not None
    # The key the SuperLink will know this node by is the key the node will sign with.
    assert registered == pair[1].public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
