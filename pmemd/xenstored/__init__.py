"""An embedded xenstored speaking the real xs_wire.h protocol: a pure store and a trio socket shell."""
