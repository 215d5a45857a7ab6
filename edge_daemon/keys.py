"""The node's authentication key pair: ECDSA P-384 in OpenSSH format, as Flower's node auth needs.

`flower-supernode --auth-supernode-private-key KEY` reads an OpenSSH private key; the operator
registers the matching `KEY.pub` line (`ecdsa-sha2-nistp384 AAAA... comment`) with the
SuperLink (`fleet-server enroll KEY.pub`). The private key never leaves the device: it is written
mode 0600 before any byte of it reaches the disk, and an existing key is never replaced unless
the caller forces it, because replacing it silently un-enrolls the node.
"""

import base64
import hashlib
import socket
from dataclasses import dataclass
from pathlib import Path

from ticket.atomic import atomic_write_bytes

PUBLIC_SUFFIX = ".pub"
KEY_TYPE = "ecdsa-sha2-nistp384"


@dataclass(frozen=True)
class NodeKey:
    private_path: Path
    public_path: Path
    public_line: str  # "ecdsa-sha2-nistp384 AAAA... comment", the text to enroll

    @property
    def fingerprint(self) -> str:
        """OpenSSH's "SHA256:..." fingerprint, so owner and operator can compare keys by ear."""
        blob = base64.b64decode(self.public_line.split()[1])
        digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
        return f"SHA256:{digest}"


def public_key_path(private_path: Path) -> Path:
    """NODE.key -> NODE.key.pub, the name ssh-keygen gives the public half."""
    return private_path.with_name(private_path.name + PUBLIC_SUFFIX)


def default_comment() -> str:
    # Tells the operator which device a key belongs to in `flwr supernode list`.
    return f"edge-daemon@{socket.gethostname()}"


def generate_key_pair(comment: str) -> tuple[bytes, str]:
    """A fresh P-384 key pair: (OpenSSH private key bytes, OpenSSH public key line)."""
    # Imported here: the idle daemon never generates keys, and cryptography is not small.
    from ticket.crypto import generate_node_auth_key

    return generate_node_auth_key(comment)


def write_node_key(private_path: Path, *, comment: str, force: bool = False) -> NodeKey:
    """Write a new key pair to `private_path` and `private_path.pub`.

    Raises FileExistsError, naming the file, when either exists and `force` is false.
    """
    if any(character in comment for character in "\r\n"):
        raise ValueError("a key comment must be one line")
    public_path = public_key_path(private_path)
    if not force:
        for path in (private_path, public_path):
            if path.exists():
                raise FileExistsError(
                    f"{path} already exists; pass --force to replace the key "
                    "(the node must then be enrolled again)"
                )
    private, public_line = generate_key_pair(comment)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    # Private first: a crash in between leaves a key without its .pub (re-run with --force),
    # never a .pub whose private half is missing or still the old one.
    atomic_write_bytes(private_path, private, mode=0o600)
    atomic_write_bytes(public_path, (public_line + "\n").encode("utf-8"), mode=0o644)
    return NodeKey(private_path, public_path, public_line)
