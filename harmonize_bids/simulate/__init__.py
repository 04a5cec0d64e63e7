"""A physics-based multi-site scanner simulator.

- :mod:`.tissues`: SynthSeg labels -> tissues, and per-tissue T1/T2*/PD at 1.5 T and 3 T;
- :mod:`.signal`: MPRAGE and SPGR/FLASH steady-state signal equations;
- :mod:`.protocols`: the serializable :class:`~.protocols.Protocol` record and named protocols;
- :mod:`.artifacts`: one function per artifact (texture, bias, blur, noise, vendor mapping);
- :mod:`.anatomy`: anatomical variety from a few label maps (deformation, flips, rotations);
- :mod:`.render`: label map + protocol -> T1w image, brain mask and tissue map;
- :mod:`.shift`: a protocol shift applied to a real image;
- :mod:`.dataset`: traveling-subject BIDS datasets (``harmonize_bids-simulate``).
"""
