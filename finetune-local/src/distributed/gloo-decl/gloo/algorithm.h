// See c10d.cpp ("Gloo's headers"): declarations only, for ProcessGroupGloo.hpp.
#pragma once
#include "gloo/context.h"
