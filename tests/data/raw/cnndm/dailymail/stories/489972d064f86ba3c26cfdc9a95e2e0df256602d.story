Scientists in Lakeview have found a new species of lizard.

The lizard was discovered in a forest near the river.

Researchers led by Anna Price say it is about 6 centimeters long.

They named it after the town of Lakeview.

The team plans to return to the forest next spring.

@highlight

Scientists find a new species of lizard near Lakeview

@highlight

The lizard is about 6 centimeters long

