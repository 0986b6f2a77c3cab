"""The Spec files tab's handlers: export the current setup (.safetensors spec, .gguf control vector), import one into
the spec editor, and copy the quick rows into the editor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.context import AppContext
from app.sanitize import escape_markdown
from app.spec_editor import IMPORTED_PREFIX, Rows, SessionVectors, names_by_layer, spec_to_rows
from app.steering_controls import SteeringControls
from app.temp_files import discard_upload
from vectors import SteeringError, SteeringSpec, export_gguf_control_vector, import_gguf_control_vector

__all__ = ["EXPORTED_SPECS_REMEMBERED", "SPEC_SUFFIXES", "SpecFileHandlers"]

EXPORTED_SPECS_REMEMBERED = 1024
SPEC_SUFFIXES = (".safetensors", ".gguf")


class SpecFileHandlers(AppContext):
    """Export, import, and quick rows -> spec editor."""

    def export_spec(
        self,
        vector: str | None,
        layer: float,
        scale: float,
        steering_mode: str,
        editor: Any,
        description: str,
        session: SessionVectors | None = None,
        vector_2: str | None = None,
        layer_2: float = 0,
        scale_2: float = 1.0,
        vector_3: str | None = None,
        layer_3: float = 0,
        scale_3: float = 1.0,
        vector_4: str | None = None,
        layer_4: float = 0,
        scale_4: float = 1.0,
        skip_first_tokens: float | None = 0,
    ) -> str:
        """Export the current steering setup as a sidesteer spec file (.safetensors).

        Args:
            vector_2: Quick rows 2-4 and skip_first_tokens as for /compare.

        Returns:
            Path of the spec file to download.
        """
        controls = SteeringControls.from_args(locals())
        spec = self.spec(controls, description or "")
        self._remember_names(spec, names_by_layer(None, 0, "editor", self.setup_rows(controls)))
        return str(spec.save(self.exports.new_path(f"spec-{spec.fingerprint()[:12]}.safetensors")))

    def export_gguf(
        self,
        vector: str | None,
        layer: float,
        scale: float,
        steering_mode: str,
        editor: Any,
        description: str,
        session: SessionVectors | None = None,
        vector_2: str | None = None,
        layer_2: float = 0,
        scale_2: float = 1.0,
        vector_3: str | None = None,
        layer_3: float = 0,
        scale_3: float = 1.0,
        vector_4: str | None = None,
        layer_4: float = 0,
        scale_4: float = 1.0,
        skip_first_tokens: float | None = 0,
    ) -> str:
        """Export the current setup's add vectors as a llama.cpp control vector (.gguf).

        Layer L becomes ``direction.L``, the output of llama.cpp's block L; layer 0 has no llama.cpp slot and is refused.

        Returns:
            Path of the GGUF file to download.
        """
        spec = self.spec(SteeringControls.from_args(locals()), description or "")
        return str(export_gguf_control_vector(spec, self.exports.new_path(f"control-vector-{spec.fingerprint()[:12]}.gguf")))

    def _remember_names(self, spec: SteeringSpec, names: dict[tuple[int, str], str]) -> None:
        fingerprint = spec.fingerprint()
        self.exported_names.pop(fingerprint, None)
        self.exported_names[fingerprint] = names
        while len(self.exported_names) > EXPORTED_SPECS_REMEMBERED:  # oldest first (dicts keep insertion order)
            self.exported_names.pop(next(iter(self.exported_names)))

    def _read_upload(self, path: Path) -> SteeringSpec:
        """The spec in an uploaded file, checked against the limits and the loaded model."""
        if path.suffix.lower() not in SPEC_SUFFIXES:
            raise SteeringError(
                f"file: {path.name!r} is neither a .safetensors spec file nor a .gguf control vector; pick one of those"
            )
        if not path.is_file():
            raise SteeringError(f"file: {path.name!r} is no longer on the server; upload it again")
        self.limits.check_upload(path)
        if path.suffix.lower() == ".gguf":
            spec = import_gguf_control_vector(path, model_id=self.engine.model_id)
        else:
            spec = SteeringSpec.load(path)
        self.limits.check("max_spec_layers", len(spec.active_layers()), "file", "import a spec with fewer layers")
        return self.engine.validate_spec(spec)

    def import_spec(self, file: str | None, session: SessionVectors | None = None) -> tuple[str, Rows, dict[str, Any], str]:
        """Load a spec file (.safetensors) or llama.cpp control vector (.gguf) into the spec editor.

        The file is validated against the loaded model first; a bad file raises and changes nothing. The upload is
        deleted from the server once read (its vectors stay in this browser session).

        Args:
            file: The uploaded file.

        Returns:
            Steering mode ("editor"), the editor rows, and a status line.
        """
        if not file:
            raise SteeringError("file: nothing uploaded; choose a .safetensors spec file or a .gguf control vector")
        path = Path(file)
        try:
            spec = self._read_upload(path)
        finally:
            discard_upload(path, self.upload_dir)
        rows, vectors = spec_to_rows(spec, self.named_tensors(session), self.exported_names.get(spec.fingerprint()))
        kept = {name: v for name, v in (session or {}).items() if not name.startswith(IMPORTED_PREFIX)}  # the previous file's go
        # Everything from the file is shown as plain text: a stranger wrote it.
        status = f"Imported **{escape_markdown(path.name)}**: {len(rows)} layer(s), fingerprint `{spec.fingerprint()[:12]}`"
        if spec.model_id and spec.model_id != self.engine.model_id:
            status += f" (made for {escape_markdown(spec.model_id)}, loaded model is {escape_markdown(self.engine.model_id)})"
        if spec.metadata.description:
            status += f"; {escape_markdown(spec.metadata.description)}"
        return "editor", rows, {**kept, **vectors}, status

    def quick_to_editor(
        self,
        vector: str | None,
        layer: float,
        scale: float,
        session: SessionVectors | None = None,
        vector_2: str | None = None,
        layer_2: float = 0,
        scale_2: float = 1.0,
        vector_3: str | None = None,
        layer_3: float = 0,
        scale_3: float = 1.0,
        vector_4: str | None = None,
        layer_4: float = 0,
        scale_4: float = 1.0,
    ) -> tuple[str, Rows]:
        """Copy the quick rows into the spec editor (to add more layers or ops): one editor row per quick row.

        Returns:
            Steering mode ("editor") and the editor rows.
        """
        rows = self.setup_rows(SteeringControls.from_args(locals()))
        return "editor", sorted(rows, key=lambda row: row[0])
