"""Looking inside the hybrid LM (paper §3.1 and §4.3): information blocking (blocking) and attention maps of
attention and Mamba-2 layers (attention), both through token mixing made explicit (mixing, sequence); vision-token
redundancy by depth (redundancy), through the usual inference with TransV kinds that drop without transfer.
`timeviper analyze blocking|redundancy|attention` runs them on synthetic items (analysis.commands)."""
