// Stand-in for the CUDA runtime header when a kernel is built for the SIMT emulator (see simt.h).
#pragma once
#include "simt.h"
