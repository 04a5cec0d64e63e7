"""The derivatives sink: hands files to :mod:`harmonize_bids.derivatives`."""
from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from harmonize_bids.derivatives import save_derivative


class _SinkInputSpec(BaseInterfaceInputSpec):
    output_dir = Directory(mandatory=True, desc="root of the derivative dataset")
    in_file = File(exists=True, mandatory=True, desc="file to save")
    kind = traits.Str(mandatory=True, desc="key of harmonize_bids.derivatives.OUTPUTS")
    source_entities = traits.Dict(mandatory=True, desc="entities of the source T1w")
    site = traits.Str(desc="site of the source image")
    metadata = traits.Dict(desc="extra sidecar fields")


class _SinkOutputSpec(TraitedSpec):
    out_file = File(desc="the saved derivative")


class DerivativesSink(SimpleInterface):
    """Save one derivative and its sidecar atomically (see ``derivatives.save_derivative``)."""

    input_spec = _SinkInputSpec
    output_spec = _SinkOutputSpec

    def _run_interface(self, runtime):
        out = save_derivative(
            Path(self.inputs.output_dir), dict(self.inputs.source_entities), self.inputs.kind,
            Path(self.inputs.in_file), site=self.inputs.site or None,
            extra_metadata=dict(self.inputs.metadata) if self.inputs.metadata else None,
        )
        self._results["out_file"] = str(out)
        return runtime
